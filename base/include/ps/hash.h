/*
 * hash.h — the engine's 64-bit hashes (dictionary, id maps). Not cryptographic; stable
 * across runs and platforms, so anything derived from them (k-means seeds) is reproducible.
 */
#ifndef PS_HASH_H
#define PS_HASH_H

#include <stddef.h>
#include <stdint.h>

uint64_t ps_hash_bytes(const void *p, size_t n); /* FNV-1a, then finalized */
uint64_t ps_hash_u64(uint64_t x);                /* murmur3's 64-bit finalizer */

#endif
