/* The CLIP BPE merges (data/bpe_simple_vocab_16e6.txt.gz, MIT), embedded so the binary needs
 * no data files at run time. */
#include <stddef.h>

#include "text/vocab_blob.h"

__asm__(".section .rodata\n"
        ".balign 16\n"
        ".globl sdxl_vocab_gz\n"
        "sdxl_vocab_gz:\n"
        ".incbin \"" SDXL_VOCAB_PATH "\"\n"
        ".globl sdxl_vocab_gz_end\n"
        "sdxl_vocab_gz_end:\n"
        ".previous\n");

size_t sdxl_vocab_gz_size(void) { return (size_t)(sdxl_vocab_gz_end - sdxl_vocab_gz); }
