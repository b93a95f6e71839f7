/*
 * The libFuzzer entry points mc-standby-fuzz.c defines or calls
 * (libFuzzer ships no C header for them).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef MC_FUZZ_LIBFUZZER_H
#define MC_FUZZ_LIBFUZZER_H

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,
                               unsigned int seed);

#endif
