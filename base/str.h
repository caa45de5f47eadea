/* Small string tests shared by every layer. */
#ifndef QD_BASE_STR_H
#define QD_BASE_STR_H

#include <stdbool.h>
#include <stddef.h>

/* Whether the file name path ends with ext (".gguf", ".u32.bin"), ignoring ASCII case, so that
 * MODEL.GGUF is a GGUF file too. */
bool qd_has_ext(const char *path, const char *ext);

/* Whether s has the shape of a lowercase UUID: 36 characters, 8-4-4-4-12 hex digits
 * separated by '-' (how job ids are written; any version). */
bool qd_uuid_like(const char *s);

/* A byte count as written in config files and on the command line: digits with an optional
 * K, M, G or T suffix (powers of 1024) and an optional B ("512M", "10GiB" is not accepted,
 * "10G" and "10GB" are). 0 and *out set, or -1 when v is not one or overflows. */
int qd_parse_size(const char *v, size_t *out);

/* bytes as "1.5 GiB" / "340 MiB" / "12 KiB" / "17 B" into buf (n bytes); returns buf. */
char *qd_format_size(double bytes, char *buf, size_t n);

#endif
