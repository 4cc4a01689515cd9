/* `sdxl schedulers`: the sampler table, name resolution across dialects, recommendations. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "denoise/registry.h"
#include "io/json.h"

static void json_str(const char *s) {
    char buf[512];
    sdxl_json_escape(buf, sizeof buf, s ? s : "", strlen(s ? s : ""));
    fputs(buf, stdout);
}

static int table(int as_json) {
    if (as_json) printf("{\"samplers\":[");
    else
        printf("%-13s %-14s %-17s %-33s %5s %5s %-13s %-9s %5s %4s %s\n", "name", "a1111", "comfyui", "diffusers",
               "evals", "order", "kind", "schedule", "steps", "cfg", "notes");
    for (int k = 0; k < SDXL_SAMPLER_COUNT; k++) {
        const sdxl_sampler_traits *t = sdxl_sampler_traits_get((sdxl_sampler_kind)k);
        const char *fam = t->family == SDXL_FAMILY_DETERMINISTIC ? "deterministic"
                          : t->family == SDXL_FAMILY_ANCESTRAL   ? "ancestral"
                                                                 : "sde";
        int steps = t->steps_base ? t->steps_base : t->steps_lcm;
        if (!as_json) {
            printf("%-13s %-14s %-17s %-33s %5d %5d %-13s %-9s %5d %4.1f %s%s\n", t->name, t->a1111, t->comfy,
                   t->diffusers, t->evals_per_step, t->order, fam, sdxl_schedule_name(t->default_schedule), steps,
                   t->cfg_base, t->implemented ? "" : "[schedule only] ", t->note);
            continue;
        }
        printf("%s{\"name\":", k ? "," : "");
        json_str(t->name);
        printf(",\"a1111\":");
        json_str(t->a1111);
        printf(",\"comfyui\":");
        json_str(t->comfy);
        printf(",\"diffusers\":");
        json_str(t->diffusers);
        printf(",\"evals_per_step\":%d,\"order\":%d,\"kind\":\"%s\",\"default_schedule\":\"%s\","
               "\"steps\":{\"base\":%d,\"refiner\":%d,\"turbo\":%d,\"lcm\":%d},\"cfg\":{\"base\":%g,\"turbo\":%g},"
               "\"img2img\":%s,\"implemented\":%s,\"note\":",
               t->evals_per_step, t->order, fam, sdxl_schedule_name(t->default_schedule), t->steps_base,
               t->steps_refiner, t->steps_turbo, t->steps_lcm, t->cfg_base, t->cfg_turbo,
               t->img2img_ok ? "true" : "false", t->implemented ? "true" : "false");
        json_str(t->note);
        printf("}");
    }
    if (as_json) {
        printf("],\"schedules\":[");
        for (int k = 1; k < SDXL_SCHEDULE_COUNT; k++) printf("%s\"%s\"", k > 1 ? "," : "", sdxl_schedule_name((sdxl_schedule_kind)k));
        printf("],\"aliases\":[");
        for (size_t i = 0; i < sdxl_sched_alias_count(); i++) {
            const sdxl_sched_alias *a = sdxl_sched_alias_at(i);
            printf("%s{\"dialect\":\"%s\",\"name\":", i ? "," : "", a->dialect);
            json_str(a->name);
            printf(",\"sampler\":\"%s\",\"schedule\":\"%s\"}", sdxl_sampler_name(a->sampler),
                   a->schedule == SDXL_SCHEDULE_DEFAULT ? "" : sdxl_schedule_name(a->schedule));
        }
        printf("]}\n");
    } else {
        printf("\nschedules: automatic (the sampler's default), uniform/normal, karras, exponential, sgm_uniform, "
               "simple, ddim_uniform, beta, align_your_steps\n");
    }
    return 0;
}

static int usage(FILE *f) {
    fprintf(f, "usage: sdxl schedulers [--json]\n"
               "       sdxl schedulers resolve <sampler name> [<schedule name>]\n"
               "       sdxl schedulers recommend <preview|balanced|quality|few_steps|img2img|reproducible> [--json]\n");
    return f == stdout ? 0 : 2;
}

int cmd_schedulers(int argc, char **argv) {
    int as_json = 0;
    const char *pos[3] = {NULL, NULL, NULL};
    int np = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) as_json = 1;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return usage(stdout);
        else if (np < 3) pos[np++] = argv[i];
        else return usage(stderr);
    }
    if (np == 0) return table(as_json);
    sdxl_err e = {0};
    if (!strcmp(pos[0], "resolve")) {
        if (np < 2) return usage(stderr);
        sdxl_sched_choice c;
        if (sdxl_sched_resolve(pos[1], pos[2], &c, &e)) {
            fprintf(stderr, "sdxl schedulers: %s\n", e.msg);
            return 1;
        }
        printf("sampler=%s schedule=%s\n", sdxl_sampler_name(c.sampler), sdxl_sched_canonical_schedule(&c));
        return 0;
    }
    if (!strcmp(pos[0], "recommend")) {
        if (np < 2) return usage(stderr);
        sdxl_use_case u;
        if (sdxl_use_case_parse(pos[1], &u, &e)) {
            fprintf(stderr, "sdxl schedulers: %s\n", e.msg);
            return 1;
        }
        sdxl_recommendation r;
        sdxl_recommend(u, &r);
        if (as_json) {
            printf("{\"use_case\":\"%s\",\"sampler\":\"%s\",\"schedule\":\"%s\",\"steps\":%d,\"cfg\":%g,\"why\":",
                   sdxl_use_case_name(u), sdxl_sampler_name(r.choice.sampler), sdxl_sched_canonical_schedule(&r.choice),
                   r.steps, r.cfg);
            json_str(r.why);
            printf("}\n");
        } else {
            printf("sampler=%s schedule=%s steps=%d cfg=%g\n%s\n", sdxl_sampler_name(r.choice.sampler),
                   sdxl_sched_canonical_schedule(&r.choice), r.steps, r.cfg, r.why);
        }
        return 0;
    }
    return usage(stderr);
}
