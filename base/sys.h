/* Process facts: a monotonic clock and the peak resident set size; large buffers. */
#ifndef QD_BASE_SYS_H
#define QD_BASE_SYS_H

#include <stddef.h>

/* Wall-clock seconds from a monotonic clock. */
double qd_now(void);

/* Peak resident set size of this process in bytes (from getrusage). */
size_t qd_peak_rss(void);

/* A buffer of n bytes for a large array that is written once per use (logits over a
 * vocabulary, a batch's activations): from 2 MiB up it is 2 MiB-aligned and advised as
 * transparent huge pages (MADV_HUGEPAGE; the kernel's default here is "madvise"), so touching
 * it costs one page fault per 2 MiB instead of per 4 KiB (a 131 MB logits buffer: 32,000 faults,
 * about 0.1 s). Below that, malloc. Free with free(). NULL when out of memory. */
void *qd_alloc_large(size_t n);

#endif
