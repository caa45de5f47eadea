/* Process facts: clock and peak RSS. */
#include "base/sys.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

double qd_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

size_t qd_peak_rss(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (size_t)ru.ru_maxrss * 1024;
}

void *qd_alloc_large(size_t n) {
    const size_t huge = (size_t)2 << 20;
    if (n < huge) return malloc(n ? n : 1);
    void *p = NULL;
    if (posix_memalign(&p, huge, n) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, (n + huge - 1) / huge * huge, MADV_HUGEPAGE); /* advice only */
#endif
    return p;
}
