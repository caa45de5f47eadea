/* Small string tests shared by every layer. */
#ifndef QD_BASE_STR_H
#define QD_BASE_STR_H

#include <stdbool.h>

/* Whether the file name path ends with ext (".gguf", ".u32.bin"), ignoring ASCII case, so that
 * MODEL.GGUF is a GGUF file too. */
bool qd_has_ext(const char *path, const char *ext);

/* Whether s has the shape of a lowercase UUID: 36 characters, 8-4-4-4-12 hex digits
 * separated by '-' (how job ids are written; any version). */
bool qd_uuid_like(const char *s);

#endif
