/* A repository file compiled into the binary, so that what a binary serves or runs is always
 * the file it was built with and nothing is looked up beside it at run time.
 * QD_EMBED_FILE(sym, "path") places the file's bytes, then a NUL, in .rodata between the
 * symbols sym_start_ and sym_end_ (the end is before the NUL). The assembler's .incbin reads
 * path relative to the directory the compiler runs in, the repository root; the Makefile names
 * the file as a prerequisite of the object because -MMD cannot see an .incbin. */
#ifndef QD_BASE_EMBED_H
#define QD_BASE_EMBED_H

#define QD_EMBED_FILE(sym, path)                                                               \
    __asm__(".section .rodata\n"                                                               \
            ".balign 16\n" #sym "_start_:\n"                                                   \
            ".incbin \"" path "\"\n" #sym "_end_:\n"                                           \
            ".byte 0\n"                                                                        \
            ".previous\n");                                                                    \
    extern const char sym##_start_[] __asm__(#sym "_start_");                                  \
    extern const char sym##_end_[] __asm__(#sym "_end_")

#endif
