/* The BLAS in use, from OpenBLAS's own queries, and its kernel chosen by CPU features (see
 * blas.h for the rules). */
#include "quant/fp/blas.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define QD_X86 1
#endif

#define ENV_CORE "OPENBLAS_CORETYPE"
#define ENV_TIMEOUT "OPENBLAS_THREAD_TIMEOUT"
#define ENV_MARK "QD_BLAS_CHOSEN"
#define ENV_OFF "QD_BLAS_SELECT"

/* log2 of the cycles OpenBLAS's idle threads spin (sched_yield) before they sleep; the library's
 * default is 28 (about 0.1 s). quantd's own pool runs between the GEMMs, on the same cores, and
 * spinning threads take them from it: blas.h. */
#define QD_THREAD_TIMEOUT "4"

/* ---------------------------------------------------------------- CPU features */

#ifdef QD_X86
static unsigned long long xcr0(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; /* OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

const char *qd_blas_wanted_kernel(void) {
#ifdef QD_X86
    unsigned a, b, c, d, max;
    max = __get_cpuid_max(0, NULL);
    if (max < 1) return NULL;
    __cpuid(0, a, b, c, d);
    int amd = (b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u) || /* AuthenticAMD */
              (b == 0x6f677948u && d == 0x6e65476eu && c == 0x656e6975u);   /* HygonGenuine */
    __cpuid(1, a, b, c, d);
    int avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    unsigned long long x = xcr0();
    int ymm = (x & 0x6) == 0x6, zmm = (x & 0xe6) == 0xe6;
    unsigned b7 = 0, a71 = 0;
    if (max >= 7) {
        __cpuid_count(7, 0, a, b7, c, d);
        __cpuid_count(7, 1, a71, b, c, d);
    }
    int avx2 = (b7 >> 5) & 1;
    int avx512 = ((b7 >> 16) & 1) && ((b7 >> 17) & 1) && ((b7 >> 30) & 1) && ((b7 >> 31) & 1);
    int bf16 = (a71 >> 5) & 1;
    if (avx512 && zmm) return bf16 ? "Cooperlake" : "SkylakeX";
    if (avx2 && fma && ymm) return amd ? "Zen" : "Haswell";
    if (avx && ymm) return "Sandybridge";
#endif
    return NULL;
}

/* The vector level of an OpenBLAS x86-64 kernel name: 0 SSE, 1 AVX, 2 AVX2/FMA, 3 AVX-512;
 * -1 for names not listed (a newer library's kernel is never second-guessed). */
static int kernel_level(const char *name) {
    static const struct { const char *name; int level; } table[] = {
        {"Prescott", 0},   {"Core2", 0},       {"Penryn", 0},         {"Dunnington", 0},
        {"Nehalem", 0},    {"Atom", 0},        {"Opteron", 0},        {"Opteron(SSE3)", 0},
        {"Barcelona", 0},  {"Nano", 0},        {"Bobcat", 0},         {"Katmai", 0},
        {"Coppermine", 0}, {"Northwood", 0},   {"Banias", 0},         {"Athlon", 0},
        {"Unknown", 0},    {"Sandybridge", 1}, {"Bulldozer", 1},      {"Piledriver", 1},
        {"Steamroller", 1}, {"Excavator", 1},  {"Haswell", 2},        {"Zen", 2},
        {"SkylakeX", 3},   {"Cooperlake", 3},  {"SapphireRapids", 3},
    };
    if (!name) return -1;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (!strcasecmp(name, table[i].name)) return table[i].level;
    return -1;
}

/* ---------------------------------------------------------------- re-execution */

/* argv of this process from /proc/self/cmdline (NUL-separated), malloc'd; NULL on failure. */
static char **read_cmdline(void) {
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (!f) return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (len < cap) break;
        char *nb = realloc(buf, 2 * cap + 1);
        if (!nb) { free(buf); buf = NULL; break; }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    if (!buf || len == 0) { free(buf); return NULL; }
    buf[len] = 0;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += buf[i] == 0;
    if (buf[len - 1] != 0) n++;
    char **argv = malloc((n + 1) * sizeof *argv);
    if (!argv) { free(buf); return NULL; }
    size_t k = 0;
    for (size_t i = 0; i < len && k < n; i += strlen(buf + i) + 1) argv[k++] = buf + i;
    argv[k] = NULL;
    return argv; /* buf leaks on purpose: the process is replaced or argv stays in use */
}

/* the value quantd set for var, from the marker ("VAR=VALUE ..."), or NULL */
static const char *marked(const char *var, char *buf, size_t n) {
    const char *mark = getenv(ENV_MARK);
    size_t l = strlen(var);
    for (const char *p = mark; p && *p;) {
        const char *end = strchr(p, ' ');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > l && !strncmp(p, var, l) && p[l] == '=') {
            snprintf(buf, n, "%.*s", (int)(len - l - 1), p + l + 1);
            return buf;
        }
        p = end ? end + 1 : p + len;
    }
    return NULL;
}

void qd_blas_select(char **argv) {
    if (getenv(ENV_MARK)) return;   /* already re-executed once: never loop */
    const char *off = getenv(ENV_OFF);
    if (off && !strcmp(off, "0")) return;
    /* the kernel: a user's (or an earlier selection's) choice stands; a fixed-kernel build
     * ignores the variable */
    const char *want = NULL, *cfg = openblas_get_config();
    if (!getenv(ENV_CORE) && cfg && strstr(cfg, "DYNAMIC_ARCH")) {
        want = qd_blas_wanted_kernel();
        int have = kernel_level(openblas_get_corename()), need = kernel_level(want);
        if (have < 0 || have >= need) want = NULL;
    }
    /* the idle threads' spin, for the pthreads build with threads (an OpenMP build ignores it) */
    int timeout = !getenv(ENV_TIMEOUT) && !getenv("GOTO_THREAD_TIMEOUT") &&
                  openblas_get_parallel() == 1 && openblas_get_num_threads() > 1;
    if (!want && !timeout) return;
    char **av = argv ? argv : read_cmdline();
    if (!av || !av[0]) return;
    char mark[96];
    snprintf(mark, sizeof mark, "%s%s%s%s%s", want ? ENV_CORE "=" : "", want ? want : "",
             want && timeout ? " " : "", timeout ? ENV_TIMEOUT "=" : "",
             timeout ? QD_THREAD_TIMEOUT : "");
    if ((want && setenv(ENV_CORE, want, 1)) ||
        (timeout && setenv(ENV_TIMEOUT, QD_THREAD_TIMEOUT, 1)) || setenv(ENV_MARK, mark, 1))
        goto failed;
    fflush(NULL);
    execv("/proc/self/exe", av);
failed: /* exec failed (no /proc, say): run on with the library's own choices, and say so */
    if (want) unsetenv(ENV_CORE);
    if (timeout) unsetenv(ENV_TIMEOUT);
    unsetenv(ENV_MARK);
}

/* ---------------------------------------------------------------- description */

/* who set var: "quantd" (the marker names its value), "user", "library" (unset) */
static const char *who_set(const char *var) {
    char buf[48];
    const char *env = getenv(var), *m = marked(var, buf, sizeof buf);
    return !env ? "library" : m && !strcmp(env, m) ? "quantd" : "user";
}

void qd_blas_info_get(qd_blas_info *b) {
    memset(b, 0, sizeof *b);
    const char *cfg = openblas_get_config(), *core = openblas_get_corename();
    const char *env = getenv(ENV_CORE), *want = qd_blas_wanted_kernel();
    const char *tmo = getenv(ENV_TIMEOUT);
    snprintf(b->library, sizeof b->library, "OpenBLAS");
    snprintf(b->config, sizeof b->config, "%s", cfg ? cfg : "");
    snprintf(b->core, sizeof b->core, "%s", core ? core : "");
    snprintf(b->coretype_env, sizeof b->coretype_env, "%s", env ? env : "");
    /* "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ...": the version is the second word */
    if (cfg && sscanf(cfg, "OpenBLAS %15s", b->version) != 1) b->version[0] = 0;
    snprintf(b->chosen_by, sizeof b->chosen_by, "%s", who_set(ENV_CORE));
    snprintf(b->wanted, sizeof b->wanted, "%s", want ? want : "");
    snprintf(b->thread_timeout, sizeof b->thread_timeout, "%s", tmo ? tmo : "");
    snprintf(b->timeout_by, sizeof b->timeout_by, "%s", who_set(ENV_TIMEOUT));
    b->threads = openblas_get_num_threads();
}

int qd_blas_describe(char *buf, size_t n) {
    qd_blas_info i;
    qd_blas_info_get(&i);
    const char *why = !strcmp(i.chosen_by, "quantd") ? "chosen by quantd from CPU features"
                      : !strcmp(i.chosen_by, "user") ? "OPENBLAS_CORETYPE set by the user"
                                                     : "the library's own detection";
    return snprintf(buf, n, "%s %s, kernel %s (%s; CPU features suggest %s), %d threads, "
                    "idle threads spin 2^%s cycles (%s); %s",
                    i.library, i.version, i.core, why, i.wanted[0] ? i.wanted : "none",
                    i.threads, i.thread_timeout[0] ? i.thread_timeout : "28",
                    !strcmp(i.timeout_by, "quantd") ? "set by quantd"
                    : !strcmp(i.timeout_by, "user") ? "OPENBLAS_THREAD_TIMEOUT set by the user"
                                                    : "the library's default", i.config);
}
