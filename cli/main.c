/* `sdxl` entry point: dispatches to one subcommand per file (commands.def). */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "sdxl.h"

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} command;

static const command COMMANDS[] = {
#define CLI_COMMAND(name, fn, help) {#name, fn, help},
#include "commands.def"
#undef CLI_COMMAND
};

static int usage(FILE *out) {
    fprintf(out, "usage: sdxl <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        fprintf(out, "  %-12s %s\n", COMMANDS[i].name, COMMANDS[i].help);
    fprintf(out, "\n`sdxl <command> --help` shows a command's options.\n");
    return out == stdout ? 0 : 2;
}

int cmd_version(int argc, char **argv) {
    (void)argc;
    (void)argv;
    printf("sdxl %s\ncpu: %s\n", sdxl_version(), sdxl_cpu_features());
    return 0;
}

int main(int argc, char **argv) {
    /* SIGINT/SIGTERM are blocked before any thread exists (OpenMP's pool included), so every thread
     * inherits the mask and a command's own watcher thread alone receives them (sigwait): a signal
     * cancels the work instead of killing the process mid-write. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    if (argc < 2) return usage(stderr);
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) return usage(stdout);
    if (!strcmp(argv[1], "--version")) return cmd_version(0, NULL);
    /* commands without a signal watcher keep the default action (a signal ends them at once) */
    static const char *const WATCHERS[] = {"generate", "worker", "serve"};
    int watched = 0;
    for (size_t i = 0; i < sizeof WATCHERS / sizeof WATCHERS[0]; i++) watched |= !strcmp(argv[1], WATCHERS[i]);
    if (!watched) pthread_sigmask(SIG_UNBLOCK, &sigs, NULL);
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) return COMMANDS[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "sdxl: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}
