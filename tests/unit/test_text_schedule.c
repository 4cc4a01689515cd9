/* text/prompt_schedule: A1111 prompt editing, alternation and AND against the schedules A1111's
 * prompt_parser gives (its doctests and documentation example, plus edge cases worked out from its
 * grammar and get_learned_conditioning_prompt_schedules). Expected schedules are written as
 * "end<TAB>text" lines, as `sdxl tokenize --steps` prints them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "text/prompt_schedule.h"

typedef struct scase {
    const char *prompt;
    int steps, hires, old;
    const char *want;
} scase;

#define FANTASY                                                                                                      \
    "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"          \
    "[: in background:0.25] [shoddy:masterful:0.5]"

static const scase CASES[] = {
    /* A1111 doctests */
    {"test", 10, 0, 0, "10\ttest"},
    {"a [b:3]", 10, 0, 0, "3\ta \n10\ta b"},
    {"a [b: 3]", 10, 0, 0, "3\ta \n10\ta b"},
    {"a [[[b]]:2]", 10, 0, 0, "2\ta \n10\ta [[b]]"},
    {"[(a:2):3]", 10, 0, 0, "3\t\n10\t(a:2)"},
    {"a [b : c : 1] d", 10, 0, 0, "1\ta b  d\n10\ta  c  d"},
    {"a[b:[c:d:2]:1]e", 10, 0, 0, "1\tabe\n2\tace\n10\tade"},
    {"a [unbalanced", 10, 0, 0, "10\ta [unbalanced"},
    {"a [b:.5] c", 10, 0, 0, "5\ta  c\n10\ta b c"},
    {"((a][:b:c [d:3]", 10, 0, 0, "3\t((a][:b:c \n10\t((a][:b:c d"},
    {"[a|(b:1.1)]", 10, 0, 0,
     "1\ta\n2\t(b:1.1)\n3\ta\n4\t(b:1.1)\n5\ta\n6\t(b:1.1)\n7\ta\n8\t(b:1.1)\n9\ta\n10\t(b:1.1)"},
    {"[fe|]male", 10, 0, 0,
     "1\tfemale\n2\tmale\n3\tfemale\n4\tmale\n5\tfemale\n6\tmale\n7\tfemale\n8\tmale\n9\tfemale\n10\tmale"},
    {"[fe|||]male", 10, 0, 0,
     "1\tfemale\n2\tmale\n3\tmale\n4\tmale\n5\tfemale\n6\tmale\n7\tmale\n8\tmale\n9\tfemale\n10\tmale"},
    {"a [b:.5] c", 10, 10, 0, "10\ta b c"},
    {"a [b:1.5] c", 10, 10, 0, "5\ta  c\n10\ta b c"},
    /* the documentation's example, 100 steps */
    {FANTASY, 100, 0, 0,
     "25\tfantasy landscape with a mountain and an oak in foreground shoddy\n"
     "50\tfantasy landscape with a lake and an oak in foreground in background shoddy\n"
     "60\tfantasy landscape with a lake and an oak in foreground in background masterful\n"
     "75\tfantasy landscape with a lake and an oak in background masterful\n"
     "100\tfantasy landscape with a lake and a christmas tree in background masterful"},
    /* edge cases */
    {"", 10, 0, 0, "10\t"},
    {"a|b", 10, 0, 0, "10\ta|b"},                          /* '|' outside brackets: no parse */
    {"[a|b] | c", 10, 0, 0, "10\t[a|b] | c"},
    {"[b:3] a\\", 10, 0, 0, "10\t[b:3] a\\"},              /* trailing backslash: no parse */
    {"a \\[b:3\\]", 10, 0, 0, "10\ta \\[b:3\\]"},          /* escaped brackets stay text */
    {"a \\\\ [b:2]", 10, 0, 0, "2\ta \\\\ \n10\ta \\\\ b"},
    {"[a\\]b:2]", 10, 0, 0, "2\t\n10\ta\\]b"},
    {"[a:b:3.7]", 10, 0, 0, "10\ta"},                      /* fraction of steps: 37 -> min(10, 37) */
    {"[a:b:0.55]", 10, 0, 0, "5\ta\n10\tb"},               /* 5.5 rounds down */
    {"[a:b:0.99]", 10, 0, 0, "9\ta\n10\tb"},
    {"[a:b:0]", 10, 0, 0, "10\tb"},
    {"[a:b:-2]", 10, 0, 0, "10\tb"},
    {"[a:b:12]", 10, 0, 0, "10\ta"},
    {"[a:b:1e1]", 10, 0, 0, "10\ta"},                      /* no '.': a step number */
    {"[a:b:2e-1]", 10, 0, 0, "10\tb"},                     /* step int(0.2) = 0 */
    {"[a:b: 4 ]", 10, 0, 0, "4\ta\n10\tb"},
    {"[a:b:\n3]", 10, 0, 0, "3\ta\n10\tb"},
    {"[a:b:+3]", 10, 0, 0, "3\ta\n10\tb"},
    {"[a:b:3", 10, 0, 0, "10\t[a:b:3"},
    {"[a:b:c]", 10, 0, 0, "10\t[a:b:c]"},
    {"[a:b:c:3]", 10, 0, 0, "10\t[a:b:c:3]"},
    {"[a:(b:c:2)]", 10, 0, 0, "10\t[a:(b:c:2)]"},
    {"(a:1.2) [b:c:5]", 10, 0, 0, "5\t(a:1.2) b\n10\t(a:1.2) c"},
    {"([a:b:5]:1.3)", 10, 0, 0, "5\t(a:1.3)\n10\t(b:1.3)"},
    {"(a [b:c:2])", 10, 0, 0, "2\t(a b)\n10\t(a c)"},
    {"[[a|b]:c:3]", 6, 0, 0, "1\ta\n2\tb\n3\ta\n4\tc\n5\tc\n6\tc"},
    {"[a|[b:c:2]]", 4, 0, 0, "1\ta\n2\tb\n3\ta\n4\tc"},
    {"[a:b:3] [c:d:0.5]", 10, 0, 0, "3\ta c\n5\tb c\n10\tb d"},
    {"[a|b|c]", 5, 0, 0, "1\ta\n2\tb\n3\tc\n4\ta\n5\tb"},
    {"x [a|] y", 3, 0, 0, "1\tx a y\n2\tx  y\n3\tx a y"},
    {"[|a]", 2, 0, 0, "1\t\n2\ta"},
    {"[a [b|c] d:4]", 3, 0, 0, "1\t\n2\t\n3\t"},             /* steps of a hidden alternation still count */
    {"a [b:c:2] AND d", 10, 0, 0, "2\ta b AND d\n10\ta c AND d"},
    {"[a:b:3]", 10, 0, 1, "3\ta\n10\tb"},                  /* old scheduling */
    {"[a:b:1.5]", 10, 0, 1, "1\ta\n10\tb"},
    {"[a:b:1.5]", 10, 0, 0, "10\ta"},
    {"[a:b:0.5]", 10, 0, 1, "5\ta\n10\tb"},
    {"[a:b:3]", 10, 5, 0, "5\tb"},                         /* hires pass: 3 - 10 steps of the first pass */
    {"[a:b:13]", 10, 5, 0, "3\ta\n5\tb"},
    {"[a:b:1.6]", 10, 5, 0, "3\ta\n5\tb"},                 /* (1.6 - 1) * 5 */
    {"[a:b:13]", 10, 5, 1, "10\ta"},                       /* old scheduling ignores the hires offsets */
};

static void render(const sdxl_prompt_sched *s, char *buf, size_t cap) {
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < s->n && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%d\t%s", i ? "\n" : "", s->seg[i].end_step, s->seg[i].text);
}

static void test_schedules(void) {
    int n = 0;
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        const scase *c = &CASES[i];
        sdxl_sched_opts o = {c->hires, c->old};
        sdxl_prompt_sched s;
        sdxl_err e = {0};
        int r = sdxl_prompt_schedule(c->prompt, c->hires ? c->steps : c->steps, &o, &s, &e);
        char got[4096];
        if (r == SDXL_OK) render(&s, got, sizeof got);
        CHECK(r == SDXL_OK && !strcmp(got, c->want), "schedule(\"%s\", %d, hires %d, old %d):\n got  [%s]\n want [%s]",
              c->prompt, c->steps, c->hires, c->old, r ? e.msg : got, c->want);
        sdxl_prompt_sched_free(&s);
        n++;
    }
    CHECK(n >= 40, "at least 40 schedule cases (%d)", n);
}

/* reconstruct_cond_batch: 0-based step, first segment with end_step >= step */
static void test_lookup(void) {
    sdxl_prompt_sched s;
    sdxl_err e = {0};
    CHECK(sdxl_prompt_schedule("[a|b]", 4, NULL, &s, &e) == SDXL_OK && s.n == 4, "alternation over 4 steps");
    int want[5] = {0, 0, 1, 2, 3};
    for (int st = 0; st < 5; st++) CHECK(sdxl_prompt_sched_at(&s, st) == want[st], "step %d -> %d", st, want[st]);
    sdxl_prompt_sched_free(&s);
    CHECK(sdxl_prompt_schedule("a [b:3]", 10, NULL, &s, &e) == SDXL_OK, "edit");
    CHECK(sdxl_prompt_sched_at(&s, 3) == 0 && sdxl_prompt_sched_at(&s, 4) == 1, "switch after the 4th model step");
    sdxl_prompt_sched_free(&s);
    CHECK(sdxl_prompt_schedule("x", 0, NULL, &s, &e) == SDXL_ERR_ARG && strstr(e.msg, "steps"), "steps 0 refused");
    /* pathological nesting is taken literally, without recursion trouble */
    char deep[4000];
    memset(deep, '[', sizeof deep - 1);
    deep[sizeof deep - 1] = 0;
    CHECK(sdxl_prompt_schedule(deep, 10, NULL, &s, &e) == SDXL_OK && s.n == 1 && !strcmp(s.seg[0].text, deep),
          "4000 open brackets: one literal segment");
    sdxl_prompt_sched_free(&s);
}

typedef struct acase {
    const char *prompt;
    int n;
    const char *text[4];
    double w[4];
} acase;

static const acase AND_CASES[] = {
    {"a cat :1.2 AND a dog :0.8", 2, {"a cat", " a dog"}, {1.2, 0.8}},
    {"a AND b", 2, {"a", " b"}, {1, 1}},
    {"ANDROID AND_X", 1, {"ANDROID AND_X"}, {1}},
    {"a:2", 1, {"a"}, {2}},
    {"(a:2)", 1, {"(a:2)"}, {1}},
    {"a: -1.5", 1, {"a"}, {-1.5}},
    {"a:1.", 1, {"a"}, {1}},
    {"a:.5 AND b : 3", 2, {"a", " b"}, {0.5, 3}},
    {"a\nb AND c", 2, {"a\nb ", " c"}, {1, 1}},
    {"AND", 2, {"", ""}, {1, 1}},
    {"a ANDb", 1, {"a ANDb"}, {1}},
    {"a (AND) b", 2, {"a (", ") b"}, {1, 1}},
    {"  x :2  ", 1, {"  x"}, {2}},
};

static void test_and(void) {
    for (size_t i = 0; i < sizeof AND_CASES / sizeof AND_CASES[0]; i++) {
        const acase *c = &AND_CASES[i];
        sdxl_and_part *p = NULL;
        int n = 0;
        sdxl_err e = {0};
        int ok = sdxl_prompt_and_split(c->prompt, &p, &n, &e) == SDXL_OK && n == c->n;
        for (int k = 0; ok && k < n; k++) ok = !strcmp(p[k].text, c->text[k]) && p[k].weight == c->w[k];
        CHECK(ok, "AND split of \"%s\": %d parts, first [%s] %g", c->prompt, n, n ? p[0].text : "", n ? p[0].weight : 0);
        sdxl_prompt_and_free(p, n);
    }
}

int main(void) {
    test_schedules();
    test_lookup();
    test_and();
    return check_done();
}
