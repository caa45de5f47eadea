/* qd_model_load: the checkpoint format from the path (directory, suffix) or, failing that,
 * from the file's first bytes, and the reader for it. */
#include "quant/io/load.h"
#include "base/str.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static qd_model *load(const char *path, int header_only, qd_err *err) {
    if (!path || !*path) {
        qd_errf(err, "%s: empty path", __func__);
        return NULL;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        qd_errf(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (S_ISDIR(st.st_mode)) return qd_load_hf(path, header_only, err);
    if (qd_has_ext(path, ".json") || qd_has_ext(path, ".safetensors"))
        return qd_load_hf(path, header_only, err);
    if (qd_has_ext(path, ".gguf")) return qd_load_gguf(path, header_only, err);
    /* No telling suffix: look at the content. */
    unsigned char head[9] = {0};
    FILE *f = fopen(path, "rb");
    if (!f) {
        qd_errf(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    if (got >= 4 && memcmp(head, "GGUF", 4) == 0) return qd_load_gguf(path, header_only, err);
    if (got == 9 && head[8] == '{') return qd_load_hf(path, header_only, err); /* safetensors */
    return qd_load_llama2c(path, header_only, err);
}

qd_model *qd_model_load(const char *path, qd_err *err) { return load(path, 0, err); }

qd_model *qd_model_probe(const char *path, qd_err *err) { return load(path, 1, err); }

