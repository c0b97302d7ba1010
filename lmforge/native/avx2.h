/* AVX2 helpers shared by the kernels: widen 8 16-bit floats to float32, sum a vector's lanes. */
#ifndef LMFORGE_AVX2_H
#define LMFORGE_AVX2_H

#include <immintrin.h>
#include <stdint.h>

static inline __m256 load_bf16(const uint16_t* p) {
    __m128i v = _mm_loadu_si128((const __m128i*)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

static inline __m256 load_fp16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
}

static inline __m256 load_fp32(const float* p) { return _mm256_loadu_ps(p); }

static inline float horizontal_sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

#endif
