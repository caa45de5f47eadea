/* Process facts: a monotonic clock and the peak resident set size. */
#ifndef QD_BASE_SYS_H
#define QD_BASE_SYS_H

#include <stddef.h>

/* Wall-clock seconds from a monotonic clock. */
double qd_now(void);

/* Peak resident set size of this process in bytes (from getrusage). */
size_t qd_peak_rss(void);

#endif
