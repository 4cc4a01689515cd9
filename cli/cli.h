/* `sdxl` subcommands. Each returns the process exit code: 0 ok, 1 failure, 2 usage error. */
#ifndef SDXL_CLI_H
#define SDXL_CLI_H

#define CLI_COMMAND(name, fn, help) int fn(int argc, char **argv);
#include "commands.def"
#undef CLI_COMMAND

#endif
