//! memcpy, memmove, memset, memcmp and bcmp, which the compiler calls for copies
//! and comparisons and which no libc provides here.
//!
//! Written as plain assembly (`rep movsb`/`rep stosb` and byte loops): code that
//! KVM's instruction emulator runs, and that the compiler cannot turn back into a
//! call to itself.

use core::arch::global_asm;

global_asm!(
    ".section .text.mem, \"ax\"",
    // void *memcpy(void *dst, const void *src, size_t n)
    ".global memcpy",
    "memcpy:",
    "    mov rax, rdi",
    "    mov rcx, rdx",
    "    rep movsb",
    "    ret",
    // void *memmove(void *dst, const void *src, size_t n): forward unless dst
    // lies inside src's range, then backward one byte at a time.
    ".global memmove",
    "memmove:",
    "    mov rax, rdi",
    "    cmp rdi, rsi",
    "    jbe 1f",
    "    lea r8, [rsi + rdx]",
    "    cmp rdi, r8",
    "    jae 1f",
    "    test rdx, rdx",
    "    jz 3f",
    "2:  dec rdx",
    "    mov cl, [rsi + rdx]",
    "    mov [rdi + rdx], cl",
    "    test rdx, rdx",
    "    jnz 2b",
    "3:  ret",
    "1:  mov rcx, rdx",
    "    rep movsb",
    "    ret",
    // void *memset(void *dst, int c, size_t n)
    ".global memset",
    "memset:",
    "    mov r8, rdi",
    "    mov eax, esi",
    "    mov rcx, rdx",
    "    rep stosb",
    "    mov rax, r8",
    "    ret",
    // int memcmp(const void *a, const void *b, size_t n); bcmp is the same.
    ".global memcmp",
    ".global bcmp",
    "memcmp:",
    "bcmp:",
    "    xor eax, eax",
    "    test rdx, rdx",
    "    jz 2f",
    "1:  movzx eax, byte ptr [rdi]",
    "    movzx ecx, byte ptr [rsi]",
    "    sub eax, ecx",
    "    jnz 2f",
    "    inc rdi",
    "    inc rsi",
    "    dec rdx",
    "    jnz 1b",
    "2:  ret",
);
