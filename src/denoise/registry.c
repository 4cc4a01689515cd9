#include "denoise/registry.h"

#include "denoise/ksampler.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S(x) SDXL_SAMPLER_##x
#define D SDXL_SCHEDULE_DEFAULT

static const sdxl_sched_alias ALIASES[] = {
    /* A1111 >= 1.9 sampler names (schedule chosen separately) */
    {"a1111", "Euler", S(EULER), D}, {"a1111", "Euler a", S(EULER_A), D}, {"a1111", "Heun", S(HEUN), D},
    {"a1111", "DPM2", S(DPM2), D}, {"a1111", "DPM2 a", S(DPM2_A), D}, {"a1111", "LMS", S(LMS), D},
    {"a1111", "DDIM", S(DDIM), D}, {"a1111", "PLMS", S(PNDM), D}, {"a1111", "DPM++ 2M", S(DPMPP_2M), D},
    {"a1111", "DPM++ 2M SDE", S(DPMPP_2M_SDE), D}, {"a1111", "DPM++ SDE", S(DPMPP_SDE), D},
    {"a1111", "LCM", S(LCM), D}, {"a1111", "UniPC", S(UNIPC), D}, {"a1111", "DDPM", S(DDPM), D},
    {"a1111", "DPM++ 2S a", S(DPMPP_2S_A), D}, {"a1111", "DPM++ 3M SDE", S(DPMPP_3M_SDE), D},
    {"a1111", "DPM++ 2M SDE Heun", S(DPMPP_2M_SDE_HEUN), D}, {"a1111", "DPM fast", S(DPM_FAST), D},
    {"a1111", "DPM adaptive", S(DPM_ADAPTIVE), D},
    /* A1111 legacy combined names */
    {"a1111-legacy", "Euler Karras", S(EULER), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "LMS Karras", S(LMS), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "Heun Karras", S(HEUN), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "DPM2 Karras", S(DPM2), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "DPM2 a Karras", S(DPM2_A), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "DPM++ 2M Karras", S(DPMPP_2M), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "DPM++ SDE Karras", S(DPMPP_SDE), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "DPM++ 2M SDE Karras", S(DPMPP_2M_SDE), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "DPM++ 2M SDE Exponential", S(DPMPP_2M_SDE), SDXL_SCHEDULE_EXPONENTIAL},
    {"a1111-legacy", "DPM++ 2M Exponential", S(DPMPP_2M), SDXL_SCHEDULE_EXPONENTIAL},
    {"a1111-legacy", "DPM++ SDE Exponential", S(DPMPP_SDE), SDXL_SCHEDULE_EXPONENTIAL},
    {"a1111-legacy", "DPM++ 2S a Karras", S(DPMPP_2S_A), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "DPM++ 3M SDE Karras", S(DPMPP_3M_SDE), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "DPM++ 3M SDE Exponential", S(DPMPP_3M_SDE), SDXL_SCHEDULE_EXPONENTIAL},
    {"a1111-legacy", "DPM++ 2M SDE Heun Karras", S(DPMPP_2M_SDE_HEUN), SDXL_SCHEDULE_KARRAS},
    {"a1111-legacy", "DPM++ 2M SDE Heun Exponential", S(DPMPP_2M_SDE_HEUN), SDXL_SCHEDULE_EXPONENTIAL},
    /* k-diffusion function aliases */
    {"k-diffusion", "k_euler", S(EULER), D}, {"k-diffusion", "k_euler_a", S(EULER_A), D},
    {"k-diffusion", "k_euler_ancestral", S(EULER_A), D}, {"k-diffusion", "k_heun", S(HEUN), D},
    {"k-diffusion", "k_dpm_2", S(DPM2), D}, {"k-diffusion", "k_dpm_2_a", S(DPM2_A), D},
    {"k-diffusion", "k_dpm_2_ancestral", S(DPM2_A), D}, {"k-diffusion", "k_lms", S(LMS), D},
    {"k-diffusion", "k_dpmpp_2m", S(DPMPP_2M), D}, {"k-diffusion", "k_dpmpp_2m_sde", S(DPMPP_2M_SDE), D},
    {"k-diffusion", "k_dpmpp_sde", S(DPMPP_SDE), D}, {"k-diffusion", "k_dpmpp_2s_a", S(DPMPP_2S_A), D},
    {"k-diffusion", "k_dpmpp_2s_ancestral", S(DPMPP_2S_A), D}, {"k-diffusion", "k_dpmpp_3m_sde", S(DPMPP_3M_SDE), D},
    {"k-diffusion", "k_dpmpp_2m_sde_heun", S(DPMPP_2M_SDE_HEUN), D}, {"k-diffusion", "k_dpm_fast", S(DPM_FAST), D},
    {"k-diffusion", "k_dpm_ad", S(DPM_ADAPTIVE), D}, {"k-diffusion", "k_dpm_adaptive", S(DPM_ADAPTIVE), D},
    /* ComfyUI sampler names */
    {"comfyui", "euler", S(EULER), D}, {"comfyui", "euler_ancestral", S(EULER_A), D},
    {"comfyui", "heun", S(HEUN), D}, {"comfyui", "dpm_2", S(DPM2), D}, {"comfyui", "dpm_2_ancestral", S(DPM2_A), D},
    {"comfyui", "lms", S(LMS), D}, {"comfyui", "ddim", S(DDIM), D}, {"comfyui", "ddpm", S(DDPM), D},
    {"comfyui", "dpmpp_2m", S(DPMPP_2M), D}, {"comfyui", "dpmpp_2m_sde", S(DPMPP_2M_SDE), D},
    {"comfyui", "dpmpp_2m_sde_gpu", S(DPMPP_2M_SDE), D}, {"comfyui", "dpmpp_sde", S(DPMPP_SDE), D},
    {"comfyui", "dpmpp_sde_gpu", S(DPMPP_SDE), D}, {"comfyui", "lcm", S(LCM), D},
    {"comfyui", "uni_pc", S(UNIPC), D}, {"comfyui", "uni_pc_bh2", S(UNIPC), D}, {"comfyui", "deis", S(DEIS), D},
    {"comfyui", "sa_solver", S(SA_SOLVER), D}, {"comfyui", "dpmpp_2s_ancestral", S(DPMPP_2S_A), D},
    {"comfyui", "dpmpp_3m_sde", S(DPMPP_3M_SDE), D}, {"comfyui", "dpmpp_3m_sde_gpu", S(DPMPP_3M_SDE), D},
    {"comfyui", "dpmpp_2m_sde_heun", S(DPMPP_2M_SDE_HEUN), D}, {"comfyui", "dpmpp_2m_sde_heun_gpu", S(DPMPP_2M_SDE_HEUN), D},
    {"comfyui", "dpm_fast", S(DPM_FAST), D}, {"comfyui", "dpm_adaptive", S(DPM_ADAPTIVE), D},
    {"comfyui", "ipndm", S(IPNDM), D}, {"comfyui", "heunpp2", S(HEUNPP2), D},
    {"comfyui", "gradient_estimation", S(GRADIENT_ESTIMATION), D}, {"comfyui", "res_multistep", S(RES_MULTISTEP), D},
    {"comfyui", "er_sde", S(ER_SDE), D}, {"a1111", "HeunPP2", S(HEUNPP2), D}, {"sd.cpp", "ipndm", S(IPNDM), D},
    {"comfyui", "ipndm_v", S(IPNDM_V), D}, {"sd.cpp", "ipndm_v", S(IPNDM_V), D},
    {"a1111", "Restart", S(RESTART), D}, {"k-diffusion", "restart", S(RESTART), D},
    {"a1111", "DDIM CFG++", S(DDIM_CFGPP), D}, {"a1111", "ddim_cfgpp", S(DDIM_CFGPP), D},
    /* diffusers scheduler classes */
    {"diffusers", "EulerDiscreteScheduler", S(EULER), D},
    {"diffusers", "EulerAncestralDiscreteScheduler", S(EULER_A), D},
    {"diffusers", "HeunDiscreteScheduler", S(HEUN), D}, {"diffusers", "KDPM2DiscreteScheduler", S(DPM2), D},
    {"diffusers", "KDPM2AncestralDiscreteScheduler", S(DPM2_A), D},
    {"diffusers", "LMSDiscreteScheduler", S(LMS), D}, {"diffusers", "DDIMScheduler", S(DDIM), D},
    {"diffusers", "DDPMScheduler", S(DDPM), D}, {"diffusers", "PNDMScheduler", S(PNDM), D},
    {"diffusers", "DPMSolverMultistepScheduler", S(DPMPP_2M), D},
    {"diffusers", "DPMSolverSinglestepScheduler", S(DPMPP_2S), D},
    {"diffusers", "DPMSolverSDEScheduler", S(DPMPP_SDE), D}, {"diffusers", "LCMScheduler", S(LCM), D},
    {"diffusers", "UniPCMultistepScheduler", S(UNIPC), D}, {"diffusers", "DEISMultistepScheduler", S(DEIS), D},
    {"diffusers", "SASolverScheduler", S(SA_SOLVER), D},
    /* stable-diffusion.cpp --sampling-method */
    {"sd.cpp", "euler_a", S(EULER_A), D}, {"sd.cpp", "dpm++2m", S(DPMPP_2M), D},
    {"sd.cpp", "dpm++2mv2", S(DPMPP_2M), D}, {"sd.cpp", "dpm2", S(DPM2), D},
    {"sd.cpp", "dpm++2s_a", S(DPMPP_2S_A), D},
    /* canonical names and common spellings */
    {"canonical", "dpmpp_2s", S(DPMPP_2S), D}, {"canonical", "dpmpp_singlestep", S(DPMPP_2S), D},
    {"canonical", "dpm2_a", S(DPM2_A), D}, {"canonical", "pndm", S(PNDM), D}, {"canonical", "unipc", S(UNIPC), D},
    {"canonical", "DPM++ 2S", S(DPMPP_2S), D}, {"canonical", "SA-Solver", S(SA_SOLVER), D},
    {"canonical", "dpmpp_2s_a", S(DPMPP_2S_A), D},
};

static const struct {
    const char *name;
    sdxl_schedule_kind kind;
} SCHEDULES[] = {
    {"automatic", D}, {"default", D}, {"auto", D},
    {"uniform", SDXL_SCHEDULE_NORMAL}, {"normal", SDXL_SCHEDULE_NORMAL}, {"discrete", SDXL_SCHEDULE_NORMAL},
    {"karras", SDXL_SCHEDULE_KARRAS}, {"use_karras_sigmas", SDXL_SCHEDULE_KARRAS},
    {"exponential", SDXL_SCHEDULE_EXPONENTIAL}, {"sgm_uniform", SDXL_SCHEDULE_SGM_UNIFORM},
    {"sgm uniform", SDXL_SCHEDULE_SGM_UNIFORM}, {"simple", SDXL_SCHEDULE_SIMPLE},
    {"ddim_uniform", SDXL_SCHEDULE_DDIM_UNIFORM}, {"beta", SDXL_SCHEDULE_BETA},
    {"align_your_steps", SDXL_SCHEDULE_AYS}, {"align your steps", SDXL_SCHEDULE_AYS}, {"ays", SDXL_SCHEDULE_AYS},
};
#define N_SCHEDULES (sizeof SCHEDULES / sizeof SCHEDULES[0])
#define N_ALIASES (sizeof ALIASES / sizeof ALIASES[0])

size_t sdxl_sched_alias_count(void) { return N_ALIASES; }
const sdxl_sched_alias *sdxl_sched_alias_at(size_t i) { return i < N_ALIASES ? &ALIASES[i] : NULL; }

/* lower case, '+' -> 'p', everything else that is not a letter or digit dropped */
static void norm(const char *in, char *out, size_t cap) {
    size_t k = 0;
    for (; in && *in && k + 1 < cap; in++) {
        unsigned char ch = (unsigned char)*in;
        if (ch == '+')
            out[k++] = 'p';
        else if (isalnum(ch))
            out[k++] = (char)tolower(ch);
    }
    out[k] = 0;
}

static int lev(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63) la = 63;
    if (lb > 63) lb = 63;
    int row[64];
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int prev = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int cur = row[j];
            int best = prev + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            prev = cur;
        }
    }
    return row[lb];
}

int sdxl_schedule_parse(const char *name, sdxl_schedule_kind *out, sdxl_err *e) {
    char n[128], m[128];
    norm(name, n, sizeof n);
    for (size_t i = 0; i < N_SCHEDULES; i++) {
        norm(SCHEDULES[i].name, m, sizeof m);
        if (!strcmp(n, m)) {
            *out = SCHEDULES[i].kind;
            return SDXL_OK;
        }
    }
    /* "ddim" as a schedule (A1111 "DDIM" schedule type) */
    if (!strcmp(n, "ddim")) {
        *out = SDXL_SCHEDULE_DDIM_UNIFORM;
        return SDXL_OK;
    }
    return sdxl_seterr(e, SDXL_ERR_ARG,
                       "schedule: unknown name '%s' (valid: automatic, uniform/normal, karras, exponential, "
                       "sgm_uniform, simple, ddim_uniform, beta, align_your_steps)",
                       name ? name : "");
}

static int find_sampler(const char *n, sdxl_sched_choice *out) {
    char m[128];
    for (size_t i = 0; i < N_ALIASES; i++) {
        norm(ALIASES[i].name, m, sizeof m);
        if (!strcmp(n, m)) {
            out->sampler = ALIASES[i].sampler;
            out->schedule = ALIASES[i].schedule;
            /* every dialect but diffusers' names k-diffusion's loops (A1111, ComfyUI, sd.cpp) */
            out->kdiffusion = strcmp(ALIASES[i].dialect, "diffusers") && sdxl_ksampler_supports(out->sampler);
            return 1;
        }
    }
    return 0;
}

static const char *known_unsupported(const char *n);

/* "Class(key=value, ...)": diffusers class with inline config. */
static int parse_inline_config(const char *name, sdxl_sched_choice *out, sdxl_err *e) {
    const char *p = strchr(name, '(');
    char cls[128], n[128];
    size_t len = (size_t)(p - name);
    if (len >= sizeof cls) len = sizeof cls - 1;
    memcpy(cls, name, len);
    cls[len] = 0;
    norm(cls, n, sizeof n);
    if (!find_sampler(n, out))
        return known_unsupported(n) ? sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "sampler: diffusers class '%s' is not supported", cls)
                                    : sdxl_seterr(e, SDXL_ERR_ARG, "sampler: unknown diffusers class '%s'", cls);
    p++;
    while (*p && *p != ')') {
        char key[64] = {0}, val[64] = {0};
        int used = 0;
        if (sscanf(p, " %63[^=, )] = %63[^,)]%n", key, val, &used) < 2 || used == 0)
            return sdxl_seterr(e, SDXL_ERR_ARG, "sampler: cannot parse config near '%s' (want key=value)", p);
        p += used;
        if (*p == ',') p++;
        char nv[64];
        norm(val, nv, sizeof nv);
        if (!strcmp(key, "use_karras_sigmas")) {
            if (!strcmp(nv, "true") || !strcmp(nv, "1")) out->schedule = SDXL_SCHEDULE_KARRAS, out->diffusers_karras = 1;
        } else if (!strcmp(key, "algorithm_type")) {
            if (out->sampler == S(DPMPP_2M) && (!strcmp(nv, "sdedpmsolverpp")))
                out->sampler = S(DPMPP_2M_SDE);
            else if (strcmp(nv, "dpmsolverpp") && strcmp(nv, "deis") && strcmp(nv, "datapre"))
                return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "algorithm_type: '%s' is not supported", val);
        } else if (!strcmp(key, "eta")) {
            out->eta = atof(val);
        }
    }
    return SDXL_OK;
}

/* Samplers of other dialects that we know of but do not implement: resolving one says so
 * instead of "unknown". */
static const struct {
    const char *dialect, *name;
} KNOWN_UNSUPPORTED[] = {
    {"a1111", "Euler CFG++"}, {"comfyui", "euler_cfg_pp"},
    {"comfyui", "euler_ancestral_cfg_pp"}, {"comfyui", "dpmpp_2s_ancestral_cfg_pp"}, {"comfyui", "dpmpp_2m_cfg_pp"},
    {"comfyui", "res_multistep_cfg_pp"}, {"comfyui", "res_multistep_ancestral"},
    {"comfyui", "seeds_2"}, {"comfyui", "seeds_3"},
    {"diffusers", "EDMEulerScheduler"}, {"diffusers", "EDMDPMSolverMultistepScheduler"}, {"diffusers", "TCDScheduler"},
    {"diffusers", "IPNDMScheduler"}, {"diffusers", "KarrasVeScheduler"}, {"diffusers", "ScoreSdeVeScheduler"},
    {"diffusers", "CMStochasticIterativeScheduler"}, {"diffusers", "DDIMInverseScheduler"},
    {"diffusers", "DDIMParallelScheduler"}, {"diffusers", "DDPMParallelScheduler"},
    {"diffusers", "DPMSolverMultistepInverseScheduler"}, {"diffusers", "FlowMatchEulerDiscreteScheduler"},
    {"diffusers", "FlowMatchHeunDiscreteScheduler"}, {"diffusers", "RePaintScheduler"}, {"diffusers", "UnCLIPScheduler"},
    {"diffusers", "VQDiffusionScheduler"}, {"diffusers", "DDPMWuerstchenScheduler"}, {"diffusers", "AmusedScheduler"},
    {"diffusers", "CosineDPMSolverMultistepScheduler"},
    {"sd.cpp", "tcd"},
};

static const char *known_unsupported(const char *n) {
    char m[128];
    for (size_t i = 0; i < sizeof KNOWN_UNSUPPORTED / sizeof KNOWN_UNSUPPORTED[0]; i++) {
        norm(KNOWN_UNSUPPORTED[i].name, m, sizeof m);
        if (!strcmp(n, m)) return KNOWN_UNSUPPORTED[i].dialect;
    }
    return NULL;
}

static void suggest(const char *n, char *buf, size_t cap) {
    int best[3] = {1 << 30, 1 << 30, 1 << 30};
    const char *who[3] = {NULL, NULL, NULL};
    char m[128];
    for (size_t i = 0; i < N_ALIASES; i++) {
        norm(ALIASES[i].name, m, sizeof m);
        int d = lev(n, m);
        if (strstr(m, n) && strlen(n) >= 3) d = d < 2 ? d : 2;
        int dup = 0;
        for (int k = 0; k < 3; k++) dup |= who[k] && !strcmp(who[k], ALIASES[i].name);
        if (dup) continue;
        for (int k = 0; k < 3; k++)
            if (d < best[k]) {
                for (int j = 2; j > k; j--) best[j] = best[j - 1], who[j] = who[j - 1];
                best[k] = d;
                who[k] = ALIASES[i].name;
                break;
            }
    }
    snprintf(buf, cap, "'%s', '%s', '%s'", who[0], who[1], who[2]);
}

int sdxl_sched_resolve(const char *sampler, const char *schedule, sdxl_sched_choice *out, sdxl_err *e) {
    memset(out, 0, sizeof *out);
    out->eta = -1;
    if (!sampler || !*sampler) return sdxl_seterr(e, SDXL_ERR_ARG, "sampler: name is empty");
    if (strlen(sampler) > 120) return sdxl_seterr(e, SDXL_ERR_ARG, "sampler: name longer than 120 bytes");
    int r;
    if (strchr(sampler, '(')) {
        if ((r = parse_inline_config(sampler, out, e))) return r;
    } else {
        char n[128];
        norm(sampler, n, sizeof n);
        if (!find_sampler(n, out)) {
            /* legacy combined form: "<sampler> <schedule>" */
            int ok = 0;
            char m[128];
            for (size_t i = 0; i < N_SCHEDULES && !ok; i++) {
                norm(SCHEDULES[i].name, m, sizeof m);
                size_t ln = strlen(n), lm = strlen(m);
                if (lm < ln && !strcmp(n + ln - lm, m)) {
                    char head[128];
                    memcpy(head, n, ln - lm);
                    head[ln - lm] = 0;
                    if (find_sampler(head, out)) {
                        out->schedule = SCHEDULES[i].kind;
                        ok = 1;
                    }
                }
            }
            if (!ok) {
                char sug[256];
                suggest(n, sug, sizeof sug);
                const char *d = known_unsupported(n);
                if (d)
                    return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "sampler: '%s' (%s) is not supported; closest supported: %s",
                                       sampler, d, sug);
                return sdxl_seterr(e, SDXL_ERR_ARG, "sampler: unknown name '%s'; closest: %s", sampler, sug);
            }
        }
    }
    if (schedule && *schedule) {
        sdxl_schedule_kind k;
        if ((r = sdxl_schedule_parse(schedule, &k, e))) return r;
        if (k != D || out->schedule == D) out->schedule = k;
        if (k == SDXL_SCHEDULE_KARRAS) {
            char n[64];
            norm(schedule, n, sizeof n);
            if (!strcmp(n, "usekarrassigmas")) out->diffusers_karras = 1, out->kdiffusion = 0;
        }
    }
    return SDXL_OK;
}

const char *sdxl_sched_canonical_schedule(const sdxl_sched_choice *c) {
    return sdxl_schedule_name(c->schedule);
}

/* ---- traits ----------------------------------------------------------------------------------- */

#define DET SDXL_FAMILY_DETERMINISTIC
#define ANC SDXL_FAMILY_ANCESTRAL
#define SDE SDXL_FAMILY_SDE
static const sdxl_sampler_traits TRAITS[SDXL_SAMPLER_COUNT] = {
    {S(EULER), "euler", "Euler", "euler", "EulerDiscreteScheduler", 1, 1, DET, D, 30, 10, 4, 0, 5.0, 1.0, 1, 1,
     "SDXL's default; first order, robust, matches diffusers bit for bit"},
    {S(EULER_A), "euler_a", "Euler a", "euler_ancestral", "EulerAncestralDiscreteScheduler", 1, 1, ANC, D, 30, 10, 4,
     0, 5.0, 1.0, 1, 1, "adds fresh noise every step: varied, soft detail; does not converge with more steps"},
    {S(HEUN), "heun", "Heun", "heun", "HeunDiscreteScheduler", 2, 2, DET, D, 20, 8, 0, 0, 5.0, 0, 1, 1,
     "second order, two model calls per step: accurate but twice the cost"},
    {S(DPM2), "dpm2", "DPM2", "dpm_2", "KDPM2DiscreteScheduler", 2, 2, DET, D, 20, 8, 0, 0, 5.0, 0, 1, 1,
     "second order via a geometric midpoint, two calls per step"},
    {S(DPM2_A), "dpm2_a", "DPM2 a", "dpm_2_ancestral", "KDPM2AncestralDiscreteScheduler", 2, 2, ANC, D, 25, 10, 0, 0,
     5.0, 0, 1, 1, "ancestral DPM2: two calls per step plus fresh noise"},
    {S(LMS), "lms", "LMS", "lms", "LMSDiscreteScheduler", 1, 4, DET, D, 40, 10, 0, 0, 5.0, 0, 1, 1,
     "linear multistep up to order 4; unstable at low step counts"},
    {S(DDIM), "ddim", "DDIM", "ddim", "DDIMScheduler", 1, 1, DET, D, 40, 10, 0, 0, 5.0, 0, 1, 1,
     "the classic deterministic sampler (eta = 0); eta > 0 adds noise"},
    {S(DDPM), "ddpm", "DDPM", "ddpm", "DDPMScheduler", 1, 1, ANC, D, 100, 20, 0, 0, 5.0, 0, 0, 1,
     "the training-time ancestral chain; needs many steps"},
    {S(PNDM), "pndm", "PLMS", "", "PNDMScheduler", 1, 4, DET, D, 40, 10, 0, 0, 5.0, 0, 1, 1,
     "pseudo linear multistep (PLMS); one extra call at the start"},
    {S(DPMPP_2M), "dpmpp_2m", "DPM++ 2M", "dpmpp_2m", "DPMSolverMultistepScheduler", 1, 2, DET,
     SDXL_SCHEDULE_KARRAS, 25, 10, 0, 0, 5.0, 0, 1, 1, "second order at one call per step: the best quality per call"},
    {S(DPMPP_2M_SDE), "dpmpp_2m_sde", "DPM++ 2M SDE", "dpmpp_2m_sde", "DPMSolverMultistepScheduler", 1, 2, SDE,
     SDXL_SCHEDULE_KARRAS, 30, 10, 0, 0, 5.0, 0, 1, 1, "stochastic 2M: more detail and variety, one call per step"},
    {S(DPMPP_2S), "dpmpp_2s", "DPM++ 2S", "", "DPMSolverSinglestepScheduler", 1, 2, DET, D, 25, 10, 0, 0, 5.0, 0, 1,
     1, "singlestep DPM-Solver++ (order 1/2 alternating), diffusers' variant; not A1111's ancestral 2S a"},
    {S(DPMPP_SDE), "dpmpp_sde", "DPM++ SDE", "dpmpp_sde", "DPMSolverSDEScheduler", 2, 2, SDE, SDXL_SCHEDULE_KARRAS,
     20, 8, 0, 0, 5.0, 0, 1, 1, "two calls per step with Brownian noise; noise statistically matched to torchsde"},
    {S(LCM), "lcm", "LCM", "lcm", "LCMScheduler", 1, 1, ANC, D, 0, 0, 4, 6, 1.5, 1.0, 1, 1,
     "for LCM-distilled models or the LCM LoRA only: 4-8 steps, CFG 1-2"},
    {S(UNIPC), "unipc", "UniPC", "uni_pc", "UniPCMultistepScheduler", 1, 2, DET, D, 20, 8, 0, 0, 5.0, 0, 1, 1,
     "predictor-corrector (bh2): second order plus a free corrector, strong at 10-20 steps"},
    {S(DEIS), "deis", "DEIS", "deis", "DEISMultistepScheduler", 1, 2, DET, D, 20, 8, 0, 0, 5.0, 0, 1, 1,
     "exponential integrator in log-rho, order 2 multistep; close to DPM++ 2M"},
    {S(SA_SOLVER), "sa_solver", "SA-Solver", "sa_solver", "SASolverScheduler", 1, 2, SDE, D, 25, 10, 0, 0, 5.0, 0, 1,
     1, "stochastic Adams predictor-corrector: noise injected for 200 <= t <= 800, deterministic outside"},
    {S(DPMPP_2S_A), "dpmpp_2s_a", "DPM++ 2S a", "dpmpp_2s_ancestral", "", 2, 2, ANC, SDXL_SCHEDULE_KARRAS, 20, 8, 0, 0,
     5.0, 0, 1, 1, "k-diffusion's ancestral singlestep DPM-Solver++(2S): two calls per step, fresh noise each step"},
    {S(DPMPP_3M_SDE), "dpmpp_3m_sde", "DPM++ 3M SDE", "dpmpp_3m_sde", "", 1, 3, SDE, SDXL_SCHEDULE_EXPONENTIAL, 30,
     10, 0, 0, 5.0, 0, 1, 1, "third-order multistep SDE: one call per step, wants 30+ steps and an exponential schedule"},
    {S(DPMPP_2M_SDE_HEUN), "dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun", "dpmpp_2m_sde_heun", "", 1, 2, SDE,
     SDXL_SCHEDULE_EXPONENTIAL, 30, 10, 0, 0, 5.0, 0, 1, 1,
     "2M SDE with the Heun-type second-order correction instead of the midpoint one (k-diffusion only)"},
    {S(DPM_FAST), "dpm_fast", "DPM fast", "dpm_fast", "", 1, 3, DET, D, 30, 10, 0, 0, 5.0, 0, 1, 1,
     "DPM-Solver-fast: orders 3,3,..,2,1 over evenly spaced log-sigma, exactly `steps` calls (k-diffusion only)"},
    {S(DPM_ADAPTIVE), "dpm_adaptive", "DPM adaptive", "dpm_adaptive", "", 3, 3, DET, D, 30, 0, 0, 0, 5.0, 0, 0, 1,
     "DPM-Solver-23 with a step-size controller (rtol 0.05, atol 0.0078): ignores the step count, calls vary"},
    {S(IPNDM), "ipndm", "", "ipndm", "", 1, 4, DET, D, 20, 8, 0, 0, 5.0, 0, 1, 1,
     "improved PNDM: Adams-Bashforth in sigma up to order 4 on past derivatives, one call per step"},
    {S(HEUNPP2), "heunpp2", "HeunPP2", "heunpp2", "", 3, 3, DET, D, 15, 6, 0, 0, 5.0, 0, 1, 1,
     "Heun++: three calls per step, derivatives weighted by sigma/(3 sigma_max); costly, accurate"},
    {S(GRADIENT_ESTIMATION), "gradient_estimation", "", "gradient_estimation", "", 1, 2, DET, D, 20, 8, 0, 0, 5.0, 0,
     1, 1, "Euler plus a gradient-estimation correction (gamma 2) from the previous derivative"},
    {S(RES_MULTISTEP), "res_multistep", "", "res_multistep", "", 1, 2, DET, D, 20, 8, 0, 0, 5.0, 0, 1, 1,
     "RES: second-order multistep exponential integrator, one call per step"},
    {S(ER_SDE), "er_sde", "", "er_sde", "", 1, 3, SDE, D, 30, 10, 0, 0, 5.0, 0, 1, 1,
     "extended reverse-time SDE solver, 3 stages: stochastic, good detail at 20-30 steps"},
    {S(IPNDM_V), "ipndm_v", "", "ipndm_v", "", 1, 4, DET, D, 20, 8, 0, 0, 5.0, 0, 1, 1,
     "iPNDM with Adams-Bashforth coefficients from the actual sigma spacing: one call per step, any schedule"},
    {S(RESTART), "restart", "Restart", "", "", 2, 2, SDE, SDXL_SCHEDULE_KARRAS, 20, 8, 0, 0, 5.0, 0, 1, 1,
     "Heun that, from 20 steps on, jumps back up from sigma 0.1 to 2 with fresh noise and descends again"},
    {S(DDIM_CFGPP), "ddim_cfgpp", "DDIM CFG++", "", "", 1, 1, DET, D, 30, 10, 0, 0, 7.0, 0, 1, 1,
     "DDIM with CFG++: guidance scale / 12.5, steps along the unconditional direction; needs CFG > 1"},
};

const sdxl_sampler_traits *sdxl_sampler_traits_get(sdxl_sampler_kind k) {
    return (unsigned)k < SDXL_SAMPLER_COUNT ? &TRAITS[k] : &TRAITS[0];
}

/* ---- recommendations -------------------------------------------------------------------------- */

static const char *const USE_NAMES[SDXL_USE_COUNT] = {"preview", "balanced", "quality", "few_steps", "img2img",
                                                      "reproducible"};

const char *sdxl_use_case_name(sdxl_use_case u) { return (unsigned)u < SDXL_USE_COUNT ? USE_NAMES[u] : "?"; }

int sdxl_use_case_parse(const char *name, sdxl_use_case *out, sdxl_err *e) {
    char n[64], m[64];
    norm(name, n, sizeof n);
    for (int i = 0; i < SDXL_USE_COUNT; i++) {
        norm(USE_NAMES[i], m, sizeof m);
        if (!strcmp(n, m)) {
            *out = (sdxl_use_case)i;
            return SDXL_OK;
        }
    }
    if (!strcmp(n, "fast") || !strcmp(n, "fastest")) return *out = SDXL_USE_PREVIEW, SDXL_OK;
    if (!strcmp(n, "best")) return *out = SDXL_USE_QUALITY, SDXL_OK;
    if (!strcmp(n, "turbo") || !strcmp(n, "lcm") || !strcmp(n, "lightning")) return *out = SDXL_USE_FEW_STEPS, SDXL_OK;
    if (!strcmp(n, "deterministic")) return *out = SDXL_USE_REPRODUCIBLE, SDXL_OK;
    return sdxl_seterr(e, SDXL_ERR_ARG,
                       "use case: unknown '%s' (valid: preview, balanced, quality, few_steps, img2img, reproducible)",
                       name ? name : "");
}

void sdxl_recommend(sdxl_use_case u, sdxl_recommendation *r) {
    memset(r, 0, sizeof *r);
    r->choice.eta = -1;
    r->cfg = 5.0;
    switch (u) {
    case SDXL_USE_PREVIEW:
        r->choice.sampler = S(DPMPP_2M), r->choice.schedule = SDXL_SCHEDULE_KARRAS, r->steps = 12;
        r->why = "DPM++ 2M is second order at one UNet call per step, and Karras spacing keeps 12 steps coherent: "
                 "the fewest calls for a recognisable image on a base model.";
        break;
    case SDXL_USE_BALANCED:
        r->choice.sampler = S(DPMPP_2M), r->choice.schedule = SDXL_SCHEDULE_KARRAS, r->steps = 25;
        r->why = "DPM++ 2M Karras converges by about 25 steps; more steps change little, so this is the best "
                 "quality per second.";
        break;
    case SDXL_USE_QUALITY:
        r->choice.sampler = S(DPMPP_2M_SDE), r->choice.schedule = SDXL_SCHEDULE_KARRAS, r->steps = 35;
        r->why = "the SDE variant re-injects a little noise each step, which recovers fine texture that "
                 "deterministic solvers smooth out; 35 steps let it settle.";
        break;
    case SDXL_USE_FEW_STEPS:
        r->choice.sampler = S(LCM), r->choice.schedule = D, r->steps = 6, r->cfg = 1.5;
        r->why = "distilled models (LCM, LCM-LoRA) are trained for this consistency step; use 4-8 steps and CFG "
                 "1-2. For SDXL-Turbo/Lightning use Euler a with sgm_uniform, 1-4 steps, CFG 1.";
        break;
    case SDXL_USE_IMG2IMG:
        r->choice.sampler = S(DPMPP_2M), r->choice.schedule = SDXL_SCHEDULE_KARRAS, r->steps = 30;
        r->why = "deterministic and multistep: starting part-way it keeps the init image's structure, and the "
                 "strength maps to a clean subset of the 30 steps.";
        break;
    case SDXL_USE_REPRODUCIBLE:
    default:
        r->choice.sampler = S(EULER), r->choice.schedule = D, r->steps = 30;
        r->why = "Euler with the model's own schedule is deterministic after the initial noise and reproduces "
                 "diffusers' default SDXL pipeline exactly for the same seed.";
        break;
    }
}

/* ---- diffusers configs ------------------------------------------------------------------------ */

/* UniPC, DEIS and SA-Solver are implemented in diffusers' default SDXL form only; anything else
 * is refused by field rather than silently run as the default. */
static int want_str(const sdxl_json *cfg, const char *key, const char *want, sdxl_err *e) {
    const char *v = sdxl_json_str(cfg, key, want);
    if (strcmp(v, want)) return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "%s: only '%s' is supported, got '%s'", key, want, v);
    return SDXL_OK;
}

static int want_int(const sdxl_json *cfg, const char *key, int want, sdxl_err *e) {
    int64_t v = sdxl_json_i64(cfg, key, want);
    if (v != want) return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "%s: only %d is supported, got %lld", key, want, (long long)v);
    return SDXL_OK;
}

static int want_null(const sdxl_json *cfg, const char *key, const char *what, sdxl_err *e) {
    const sdxl_json *v = sdxl_json_get(cfg, key);
    if (v && v->type != SDXL_JSON_NULL) return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "%s: %s is not supported", key, what);
    return SDXL_OK;
}

static int check_multistep_config(sdxl_sampler_kind k, const sdxl_json *cfg, sdxl_err *e) {
    int r = SDXL_OK;
    if (sdxl_json_bool(cfg, "thresholding", 0) && (k == S(UNIPC) || k == S(DEIS) || k == S(SA_SOLVER)))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "thresholding: dynamic thresholding is not supported");
    if (k == S(UNIPC)) {
        const sdxl_json *dc = sdxl_json_get(cfg, "disable_corrector");
        if ((r = want_int(cfg, "solver_order", 2, e)) || (r = want_str(cfg, "solver_type", "bh2", e)) ||
            (r = want_null(cfg, "solver_p", "an external predictor", e)))
            return r;
        if (!sdxl_json_bool(cfg, "predict_x0", 1))
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "predict_x0: only true (data prediction) is supported");
        if (!sdxl_json_bool(cfg, "lower_order_final", 1))
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "lower_order_final: only true is supported");
        if (dc && !(dc->type == SDXL_JSON_NULL || (dc->type == SDXL_JSON_ARRAY && dc->len == 0)))
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "disable_corrector: only an empty list is supported");
    } else if (k == S(DEIS)) {
        if ((r = want_int(cfg, "solver_order", 2, e)) || (r = want_str(cfg, "algorithm_type", "deis", e)) ||
            (r = want_str(cfg, "solver_type", "logrho", e)))
            return r;
        if (!sdxl_json_bool(cfg, "lower_order_final", 1))
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "lower_order_final: only true is supported");
    } else if (k == S(SA_SOLVER)) {
        if ((r = want_int(cfg, "predictor_order", 2, e)) || (r = want_int(cfg, "corrector_order", 2, e)) ||
            (r = want_str(cfg, "algorithm_type", "data_prediction", e)) ||
            (r = want_null(cfg, "tau_func", "a custom tau function", e)) ||
            (r = want_null(cfg, "variance_type", "a learned variance", e)))
            return r;
        if (!sdxl_json_bool(cfg, "lower_order_final", 1))
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "lower_order_final: only true is supported");
        /* -inf (no clipping) is the default; the JSON may carry it as -Infinity, null or a huge negative */
        double lmc = sdxl_json_num(cfg, "lambda_min_clipped", -INFINITY);
        if (lmc > -1e30)
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "lambda_min_clipped: only -inf (no clipping) is supported, got %g", lmc);
    }
    return r;
}

int sdxl_sched_from_diffusers(const char *class_name, const sdxl_json *cfg, sdxl_sampler_config *out, sdxl_err *e) {
    sdxl_sampler_config_init(out);
    sdxl_sched_choice ch;
    char n[128];
    norm(class_name, n, sizeof n);
    memset(&ch, 0, sizeof ch);
    if (known_unsupported(n))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "_class_name: '%s' is not supported", class_name);
    if (!find_sampler(n, &ch) || strstr(n, "scheduler") == NULL)
        return sdxl_seterr(e, SDXL_ERR_ARG, "_class_name: '%s' is not a known diffusers scheduler class",
                           class_name ? class_name : "");
    out->sampler = ch.sampler;
    if (!cfg) return SDXL_OK;
    const char *algo = sdxl_json_str(cfg, "algorithm_type", NULL);
    if (algo && ch.sampler == S(DPMPP_2M)) {
        if (!strcmp(algo, "sde-dpmsolver++"))
            out->sampler = S(DPMPP_2M_SDE);
        else if (strcmp(algo, "dpmsolver++"))
            return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "algorithm_type: '%s' is not supported (dpmsolver++, "
                               "sde-dpmsolver++)", algo);
    }
    if (algo && ch.sampler == S(DPMPP_2S) && strcmp(algo, "dpmsolver++"))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "algorithm_type: '%s' is not supported for singlestep", algo);
    const char *pred = sdxl_json_str(cfg, "prediction_type", "epsilon");
    if (strcmp(pred, "epsilon"))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "prediction_type: only 'epsilon' is supported, got '%s'", pred);
    int order = (int)sdxl_json_i64(cfg, "solver_order", 2);
    if ((ch.sampler == S(DPMPP_2M) || ch.sampler == S(DPMPP_2S)) && order != 2)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "solver_order: only 2 is supported, got %d", order);
    int r = check_multistep_config(ch.sampler, cfg, e);
    if (r) return r;
    if (sdxl_json_bool(cfg, "use_karras_sigmas", 0) && ch.sampler != S(EULER_A)) {
        out->schedule = SDXL_SCHEDULE_KARRAS;
        out->diffusers_karras = 1;
    }
    const char *sp = sdxl_json_str(cfg, "timestep_spacing", "leading");
    if (!strcmp(sp, "leading"))
        out->spacing = SDXL_SPACING_LEADING;
    else if (!strcmp(sp, "trailing"))
        out->spacing = SDXL_SPACING_TRAILING;
    else if (!strcmp(sp, "linspace"))
        out->spacing = SDXL_SPACING_LINSPACE;
    else
        return sdxl_seterr(e, SDXL_ERR_ARG, "timestep_spacing: must be leading, trailing or linspace, got '%s'", sp);
    int64_t off = sdxl_json_i64(cfg, "steps_offset", 0);
    if (off < 0 || off > 100) return sdxl_seterr(e, SDXL_ERR_ARG, "steps_offset: must be in [0, 100], got %lld", (long long)off);
    out->steps_offset = (int)off;
    int64_t nt = sdxl_json_i64(cfg, "num_train_timesteps", 1000);
    if (nt < 2 || nt > SDXL_MAX_TRAIN_STEPS)
        return sdxl_seterr(e, SDXL_ERR_ARG, "num_train_timesteps: must be in [2, %d], got %lld", SDXL_MAX_TRAIN_STEPS,
                           (long long)nt);
    out->train_steps = (int)nt;
    out->beta_start = sdxl_json_num(cfg, "beta_start", 0.0001);
    out->beta_end = sdxl_json_num(cfg, "beta_end", 0.02);
    const char *bs = sdxl_json_str(cfg, "beta_schedule", "linear");
    if (!strcmp(bs, "scaled_linear"))
        out->beta_kind = SDXL_BETA_SCALED_LINEAR;
    else if (!strcmp(bs, "linear"))
        out->beta_kind = SDXL_BETA_LINEAR;
    else if (!strcmp(bs, "squaredcos_cap_v2"))
        out->beta_kind = SDXL_BETA_COSINE;
    else
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "beta_schedule: '%s' is not supported", bs);
    const sdxl_json *tb = sdxl_json_get(cfg, "trained_betas");
    if (tb && tb->type != SDXL_JSON_NULL)
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "trained_betas: explicit beta arrays are not supported");
    if (sdxl_json_bool(cfg, "rescale_betas_zero_snr", 0))
        return sdxl_seterr(e, SDXL_ERR_UNSUPPORTED, "rescale_betas_zero_snr: not supported");
    if (ch.sampler == S(LCM)) {
        out->lcm_original_steps = (int)sdxl_json_i64(cfg, "original_inference_steps", 50);
        out->lcm_timestep_scaling = sdxl_json_num(cfg, "timestep_scaling", 10.0);
    }
    return sdxl_sampler_config_check(out, e);
}

/* ---- sigma cache ------------------------------------------------------------------------------ */

typedef struct cache_entry {
    sdxl_sampler_config key;
    sdxl_sampler *s;
    unsigned long long used;
} cache_entry;

struct sdxl_sigma_cache {
    int cap, hits, misses;
    unsigned long long clock;
    cache_entry *e;
};

int sdxl_sigma_cache_new(int capacity, sdxl_sigma_cache **out, sdxl_err *e) {
    *out = NULL;
    if (capacity < 1 || capacity > 4096)
        return sdxl_seterr(e, SDXL_ERR_ARG, "capacity: must be in [1, 4096], got %d", capacity);
    sdxl_sigma_cache *c = calloc(1, sizeof *c);
    if (!c || !(c->e = calloc((size_t)capacity, sizeof *c->e))) {
        free(c);
        return sdxl_seterr(e, SDXL_ERR_NOMEM, "sigma cache: out of memory");
    }
    c->cap = capacity;
    *out = c;
    return SDXL_OK;
}

void sdxl_sigma_cache_free(sdxl_sigma_cache *c) {
    if (!c) return;
    for (int i = 0; i < c->cap; i++) sdxl_sampler_free(c->e[i].s);
    free(c->e);
    free(c);
}

/* Field-wise copy into zeroed memory so that memcmp sees no padding bytes. */
static void make_key(const sdxl_sampler_config *c, sdxl_sampler_config *k) {
    memset(k, 0, sizeof *k);
    k->sampler = c->sampler;
    k->schedule = c->schedule;
    k->diffusers_karras = c->diffusers_karras;
    k->steps = c->steps;
    k->spacing = c->spacing;
    k->steps_offset = c->steps_offset;
    k->eta = c->eta;
    k->s_noise = c->s_noise;
    k->sched.rho = c->sched.rho;
    k->sched.sigma_min = c->sched.sigma_min;
    k->sched.sigma_max = c->sched.sigma_max;
    k->sched.beta_alpha = c->sched.beta_alpha;
    k->sched.beta_beta = c->sched.beta_beta;
    k->lcm_original_steps = c->lcm_original_steps;
    k->lcm_timestep_scaling = c->lcm_timestep_scaling;
    k->train_steps = c->train_steps;
    k->beta_kind = c->beta_kind;
    k->beta_start = c->beta_start;
    k->beta_end = c->beta_end;
}

int sdxl_sigma_cache_get(sdxl_sigma_cache *c, const sdxl_sampler_config *cfg, const float **sigmas, int *n_sigmas,
                         const float **timesteps, int *n_timesteps, sdxl_err *e) {
    sdxl_sampler_config key;
    make_key(cfg, &key);
    int slot = -1;
    for (int i = 0; i < c->cap; i++)
        if (c->e[i].s && !memcmp(&c->e[i].key, &key, sizeof key)) slot = i;
    if (slot >= 0) {
        c->hits++;
    } else {
        slot = 0;
        for (int i = 0; i < c->cap; i++) {
            if (!c->e[i].s) {
                slot = i;
                break;
            }
            if (c->e[i].used < c->e[slot].used) slot = i;
        }
        sdxl_sampler *s;
        int r = sdxl_sampler_new(&key, 1, &s, e);
        if (r) return r;
        sdxl_sampler_free(c->e[slot].s);
        c->e[slot].s = s;
        c->e[slot].key = key;
        c->misses++;
    }
    c->e[slot].used = ++c->clock;
    *sigmas = sdxl_sampler_sigmas(c->e[slot].s, n_sigmas);
    *timesteps = sdxl_sampler_timesteps(c->e[slot].s, n_timesteps);
    return SDXL_OK;
}

void sdxl_sigma_cache_stats(const sdxl_sigma_cache *c, int *hits, int *misses) {
    *hits = c->hits;
    *misses = c->misses;
}
