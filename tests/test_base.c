/* base/ tests: the atomic writer (new content on success; on a failed write, a failed rename
 * or an abort the old content stays and no temp file is left), mkdir -p, SHA-256 of buffers,
 * files and directories against published digests, and the string tests. Write failures are
 * real: RLIMIT_FSIZE makes write(2) fail with EFBIG part-way through the file. */
#include "base/fs.h"
#include "base/hash.h"
#include "base/stop.h"
#include "base/str.h"
#include "base/sys.h"

#include "check.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

/* Path of a file in tmpdir (check_path: rotating buffers, copy it to keep it). */
static const char *tpath(const char *name) { return check_path(tmpdir, name); }

static void put_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* Whether path holds exactly text. */
static int holds(const char *path, const char *text) {
    qd_err e;
    size_t n;
    char *b = qd_read_file(path, 1 << 24, &n, &e);
    int ok = b && n == strlen(text) && memcmp(b, text, n) == 0;
    free(b);
    return ok;
}

/* Entries of dir (not . and ..) and how many of them look like a temp file. */
static int count_entries(const char *dir, int *temps) {
    DIR *d = opendir(dir);
    int n = 0;
    *temps = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        n++;
        if (strstr(e->d_name, ".tmp")) ++*temps;
    }
    if (d) closedir(d);
    return n;
}

static void atomic_write_replaces(void) {
    char p[512];
    snprintf(p, sizeof p, "%s", tpath("w/report.json"));
    qd_err e = {{0}};
    CHECK(qd_mkdir_p(tpath("w"), &e) == QD_OK, "%s", e.msg);
    CHECK(qd_write_file_atomic(p, "first", 5, &e) == QD_OK, "%s", e.msg);
    CHECK(holds(p, "first"), "new file content");
    CHECK(qd_write_file_atomic(p, "second, longer", 14, &e) == QD_OK, "%s", e.msg);
    CHECK(holds(p, "second, longer"), "replaced content");
    CHECK(qd_write_file_atomic(p, "", 0, &e) == QD_OK, "%s", e.msg);
    CHECK(holds(p, ""), "empty content");
    CHECK(qd_write_text_atomic(p, "{\"a\": 1}", &e) == QD_OK, "%s", e.msg);
    CHECK(holds(p, "{\"a\": 1}\n"), "text written with its final newline");
    CHECK(qd_write_text_atomic(p, "", &e) == QD_OK, "%s", e.msg);
    CHECK(holds(p, "\n"), "empty text is one newline");
    struct stat st;
    CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0644, "mode %o", st.st_mode & 0777);
    int temps, n = count_entries(tpath("w"), &temps);
    CHECK(n == 1 && temps == 0, "%d entries, %d temp files left", n, temps);

    /* The streaming form, and two writers open at once get distinct temp files. */
    qd_atomic_file a, b;
    CHECK(qd_atomic_open(&a, p, &e) == QD_OK && qd_atomic_open(&b, p, &e) == QD_OK, "%s", e.msg);
    CHECK(strcmp(a.tmp, b.tmp) != 0, "temp names collide: %s", a.tmp);
    const char *hidden = tpath("w/.report.json.tmp");
    CHECK(!strncmp(a.tmp, hidden, strlen(hidden)), "temp file %s is not hidden beside the target",
          a.tmp);
    fputs("from a", a.f);
    fputs("from b", b.f);
    CHECK(qd_atomic_commit(&a, &e) == QD_OK, "%s", e.msg);
    CHECK(holds(p, "from a"), "a committed");
    CHECK(qd_atomic_commit(&b, &e) == QD_OK, "%s", e.msg);
    CHECK(holds(p, "from b"), "b committed last");
    n = count_entries(tpath("w"), &temps);
    CHECK(n == 1 && temps == 0, "%d entries, %d temp files left", n, temps);
}

static void atomic_write_failure_keeps_old(void) {
    char p[512];
    snprintf(p, sizeof p, "%s", tpath("f/data.bin"));
    qd_err e = {{0}};
    CHECK(qd_mkdir_p(tpath("f"), &e) == QD_OK, "%s", e.msg);
    put_file(p, "old content");

    /* A write that fails part-way (file size limit: EFBIG). */
    size_t big = 1 << 20;
    char *buf = malloc(big);
    memset(buf, 'x', big);
    struct rlimit old_lim, lim;
    getrlimit(RLIMIT_FSIZE, &old_lim);
    lim = old_lim;
    lim.rlim_cur = 64 << 10;
    void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0, "setrlimit: %s", strerror(errno));
    int rc = qd_write_file_atomic(p, buf, big, &e);
    setrlimit(RLIMIT_FSIZE, &old_lim);
    signal(SIGXFSZ, old_sig);
    CHECK(rc == QD_ERR, "a write over the file size limit succeeded");
    CHECK(strstr(e.msg, p) != NULL, "message does not name the file: %s", e.msg);
    CHECK(holds(p, "old content"), "old content lost after a failed write");
    int temps, n = count_entries(tpath("f"), &temps);
    CHECK(n == 1 && temps == 0, "%d entries, %d temp files left after a failed write", n, temps);
    free(buf);

    /* An abort. */
    qd_atomic_file a;
    CHECK(qd_atomic_open(&a, p, &e) == QD_OK, "%s", e.msg);
    fputs("never seen", a.f);
    qd_atomic_abort(&a);
    qd_atomic_abort(&a); /* twice is harmless */
    CHECK(holds(p, "old content"), "old content lost after an abort");
    n = count_entries(tpath("f"), &temps);
    CHECK(n == 1 && temps == 0, "%d entries, %d temp files left after an abort", n, temps);

    /* A failed rename: the target is a non-empty directory. */
    const char *d = tpath("f/adir");
    CHECK(qd_mkdir_p(tpath("f/adir/inner"), &e) == QD_OK, "%s", e.msg);
    CHECK(qd_write_file_atomic(d, "text", 4, &e) == QD_ERR, "rename over a directory succeeded");
    CHECK(strstr(e.msg, d) != NULL && strstr(e.msg, "rename"), "message: %s", e.msg);
    struct stat st;
    CHECK(stat(tpath("f/adir/inner"), &st) == 0 && S_ISDIR(st.st_mode), "directory damaged");
    n = count_entries(tpath("f"), &temps);
    CHECK(n == 2 && temps == 0, "%d entries, %d temp files left after a failed rename", n, temps);

    /* No directory to put the temp file in. */
    const char *q = tpath("f/missing/x.json");
    CHECK(qd_write_file_atomic(q, "text", 4, &e) == QD_ERR, "write into a missing directory");
    CHECK(strstr(e.msg, q) != NULL, "message does not name the file: %s", e.msg);
}

static void mkdir_p_nested_and_existing(void) {
    qd_err e = {{0}};
    struct stat st;
    const char *deep = tpath("m/a/b/c");
    CHECK(qd_mkdir_p(deep, &e) == QD_OK, "%s", e.msg);
    CHECK(stat(deep, &st) == 0 && S_ISDIR(st.st_mode), "%s not created", deep);
    CHECK(qd_mkdir_p(deep, &e) == QD_OK, "existing path: %s", e.msg);
    CHECK(qd_mkdir_p(tpath("m/a"), &e) == QD_OK, "existing parent: %s", e.msg);
    CHECK(qd_mkdir_p(tpath("m//x///y/"), &e) == QD_OK, "doubled and trailing slashes: %s", e.msg);
    CHECK(stat(tpath("m/x/y"), &st) == 0 && S_ISDIR(st.st_mode), "m/x/y not created");
    CHECK(qd_mkdir_p("/", &e) == QD_OK, "root: %s", e.msg);

    /* A component that is a regular file. */
    put_file(tpath("m/file"), "x");
    const char *bad = tpath("m/file/sub");
    CHECK(qd_mkdir_p(bad, &e) == QD_ERR, "mkdir below a regular file succeeded");
    CHECK(strstr(e.msg, tpath("m/file")) != NULL, "message does not name the file: %s", e.msg);
    CHECK(qd_mkdir_p(tpath("m/file"), &e) == QD_ERR && strstr(e.msg, "not a directory"),
          "a regular file as the last component: %s", e.msg);
    CHECK(qd_mkdir_p("", &e) == QD_ERR, "empty path accepted");
}

/* FIPS 180-2 examples and the empty message. */
#define SHA_EMPTY "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SHA_ABC "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
#define SHA_MILLION_A "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"

static void sha256_known_digests(void) {
    char hex[65];
    qd_sha256_hex("abc", 3, hex);
    CHECK(!strcmp(hex, SHA_ABC), "sha256(abc) = %s", hex);
    qd_sha256_hex("", 0, hex);
    CHECK(!strcmp(hex, SHA_EMPTY), "sha256() = %s", hex);
    unsigned char raw[32];
    qd_sha256("abc", 3, raw);
    CHECK(raw[0] == 0xba && raw[31] == 0xad, "raw digest %02x..%02x", raw[0], raw[31]);

    qd_err e = {{0}};
    uint64_t size = 99;
    put_file(tpath("abc.txt"), "abc");
    CHECK(qd_sha256_file(tpath("abc.txt"), hex, &size, &e) == QD_OK, "%s", e.msg);
    CHECK(!strcmp(hex, SHA_ABC) && size == 3, "file: %s size %llu", hex,
          (unsigned long long)size);
    put_file(tpath("empty.txt"), "");
    CHECK(qd_sha256_file(tpath("empty.txt"), hex, &size, &e) == QD_OK, "%s", e.msg);
    CHECK(!strcmp(hex, SHA_EMPTY) && size == 0, "empty file: %s", hex);

    /* A million 'a': many reads of the file buffer, and a streamed digest in odd pieces. */
    size_t n = 1000000;
    char *a = malloc(n);
    memset(a, 'a', n);
    CHECK(qd_write_file_atomic(tpath("million.txt"), a, n, &e) == QD_OK, "%s", e.msg);
    CHECK(qd_sha256_file(tpath("million.txt"), hex, &size, &e) == QD_OK, "%s", e.msg);
    CHECK(!strcmp(hex, SHA_MILLION_A) && size == n, "million a: %s", hex);
    qd_sha256_ctx *h = qd_sha256_new();
    CHECK(h != NULL, "qd_sha256_new");
    for (size_t off = 0, k = 1; h && off < n; off += k, k = k * 3 + 1) {
        if (k > n - off) k = n - off;
        qd_sha256_update(h, a + off, k);
    }
    if (h) qd_sha256_final(h, hex);
    qd_sha256_free(h);
    qd_sha256_free(NULL);
    CHECK(!strcmp(hex, SHA_MILLION_A), "streamed: %s", hex);
    free(a);

    /* A directory: its visible regular files in name order, as one stream. */
    CHECK(qd_mkdir_p(tpath("ckpt/sub"), &e) == QD_OK, "%s", e.msg);
    put_file(tpath("ckpt/b.bin"), "c");
    put_file(tpath("ckpt/a.json"), "ab");
    put_file(tpath("ckpt/.hidden"), "zzz");
    CHECK(qd_sha256_path(tpath("ckpt"), hex, &e) == QD_OK, "%s", e.msg);
    CHECK(!strcmp(hex, SHA_ABC), "directory digest %s", hex);
    CHECK(qd_sha256_path(tpath("abc.txt"), hex, &e) == QD_OK && !strcmp(hex, SHA_ABC),
          "a file through qd_sha256_path: %s", hex);

    const char *missing = tpath("no-such-file");
    CHECK(qd_sha256_file(missing, hex, &size, &e) == QD_ERR && strstr(e.msg, missing),
          "missing file: %s", e.msg);
    CHECK(qd_sha256_path(missing, hex, &e) == QD_ERR && strstr(e.msg, missing),
          "missing path: %s", e.msg);
    CHECK(qd_sha256_file(tpath("ckpt"), hex, &size, &e) == QD_ERR &&
              strstr(e.msg, "not a regular file"),
          "a directory as a file: %s", e.msg);
}

static void string_tests(void) {
    CHECK(qd_has_ext("m.gguf", ".gguf"), "m.gguf");
    CHECK(qd_has_ext("dir/M.GGUF", ".gguf"), "case is ignored");
    CHECK(qd_has_ext("t.u32.bin", ".u32.bin") && qd_has_ext("t.u32.bin", ".bin"), "two dots");
    CHECK(!qd_has_ext("gguf", ".gguf"), "shorter than the extension");
    CHECK(!qd_has_ext("m.gguf.bak", ".gguf"), "not at the end");
    CHECK(qd_has_ext("x", ""), "empty extension");

    CHECK(qd_uuid_like("0f8fad5b-d9cb-469f-a165-70867728950e"), "a v4 uuid");
    CHECK(!qd_uuid_like("0F8FAD5B-D9CB-469F-A165-70867728950E"), "upper case");
    CHECK(!qd_uuid_like("0f8fad5b-d9cb-469f-a165-70867728950"), "35 characters");
    CHECK(!qd_uuid_like("0f8fad5b-d9cb-469f-a165-70867728950e0"), "37 characters");
    CHECK(!qd_uuid_like("0f8fad5bd-9cb-469f-a165-70867728950e"), "dash misplaced");
    CHECK(!qd_uuid_like("../../../../etc/passwd-aaaaaaaaaaaaa"), "path of the right length");
    CHECK(!qd_uuid_like(""), "empty");

    size_t z = 0;
    CHECK(qd_parse_size("0", &z) == 0 && z == 0, "0");
    CHECK(qd_parse_size("512M", &z) == 0 && z == (size_t)512 << 20, "512M: %zu", z);
    CHECK(qd_parse_size("10G", &z) == 0 && z == (size_t)10 << 30, "10G");
    CHECK(qd_parse_size("10gb", &z) == 0 && z == (size_t)10 << 30, "10gb");
    CHECK(qd_parse_size("7", &z) == 0 && z == 7, "7 bytes");
    CHECK(qd_parse_size("12X", &z) < 0 && qd_parse_size("", &z) < 0 && qd_parse_size("-1", &z) < 0 &&
              qd_parse_size(" 5", &z) < 0 && qd_parse_size("5 G", &z) < 0, "not sizes");
    CHECK(qd_parse_size("99999999999999999999", &z) < 0, "overflow");
    CHECK(qd_parse_size("17179869184T", &z) < 0, "overflow by the suffix");
    char b[32];
    CHECK(!strcmp(qd_format_size(17, b, sizeof b), "17 B"), "%s", b);
    CHECK(!strcmp(qd_format_size(1536, b, sizeof b), "1.50 KiB"), "%s", b);
    CHECK(!strcmp(qd_format_size(300.0 * 1048576, b, sizeof b), "300 MiB"), "%s", b);
    CHECK(!strcmp(qd_format_size(10.0 * 1073741824, b, sizeof b), "10.0 GiB"), "%s", b);
}

/* The stop request: raised by SIGTERM and SIGINT once the handlers are in, a failure while it
 * is raised reads as a stop, and the hashing of a file (a worker's input of gigabytes) gives up
 * at once. */
/* qd_alloc_large: a small buffer is plain malloc, a large one 2 MiB-aligned; both are usable to
 * their last byte and released by free (ASan checks both). */
static void alloc_large(void) {
    size_t sizes[] = {0, 100, ((size_t)2 << 20) - 1, (size_t)2 << 20, ((size_t)5 << 20) + 3};
    for (int i = 0; i < 5; i++) {
        unsigned char *p = qd_alloc_large(sizes[i]);
        CHECK(p != NULL, "size %zu", sizes[i]);
        if (!p) continue;
        if (sizes[i] >= ((size_t)2 << 20))
            CHECK(((uintptr_t)p & (((uintptr_t)2 << 20) - 1)) == 0, "size %zu at %p", sizes[i],
                  (void *)p);
        if (sizes[i]) memset(p, 0xa5, sizes[i]);
        CHECK(!sizes[i] || (p[0] == 0xa5 && p[sizes[i] - 1] == 0xa5), "size %zu", sizes[i]);
        free(p);
    }
}

static void stop_request(void) {
    qd_stop_clear();
    CHECK(!qd_stop_requested() && qd_stop_status(QD_ERR) == QD_ERR && qd_stop_status(QD_OK) == QD_OK,
          "fresh state");
    qd_stop_on_signals();
    raise(SIGTERM);
    CHECK(qd_stop_requested() && qd_stop_status(QD_ERR) == QD_STOPPED &&
              qd_stop_status(QD_OK) == QD_OK, "SIGTERM raises the request");
    char path[4200], hex[65];
    snprintf(path, sizeof path, "%s/stop.bin", tmpdir);
    qd_err err = {{0}};
    CHECK(qd_write_file_atomic(path, "abc", 3, &err) == QD_OK, "%s", err.msg);
    CHECK(qd_sha256_file(path, hex, NULL, &err) == QD_ERR && strstr(err.msg, "stopped"),
          "hashing while stopped: %s", err.msg);
    qd_stop_clear();
    raise(SIGINT); /* the first SIGINT only raises the request too */
    CHECK(qd_stop_requested(), "SIGINT raises the request");
    qd_stop_clear();
    CHECK(qd_sha256_file(path, hex, NULL, &err) == QD_OK, "%s", err.msg);
    signal(SIGTERM, SIG_DFL), signal(SIGINT, SIG_DFL);
}

int main(void) {
    check_tmpdir(tmpdir, sizeof tmpdir, "test_base");
    RUN(atomic_write_replaces);
    RUN(atomic_write_failure_keeps_old);
    RUN(mkdir_p_nested_and_existing);
    RUN(sha256_known_digests);
    RUN(string_tests);
    RUN(stop_request);
    RUN(alloc_large);
    check_rmtree(tmpdir);
    return CHECK_DONE();
}
