/* y = x W^T (+ b) for float32 activations and bfloat16 or float16 weights, with AVX2 + FMA.
 *
 * One row or a few rows of activations (decoding) are bound by reading the weights once:
 * each weight row is widened to float32 in registers, multiplied into every activation row
 * and never written back, and rows ahead are prefetched. Sums are kept in float32.
 * x: [M, K] float32, w: [N, K] 16-bit, bias: [N] float32 or NULL, y: [M, N] float32;
 * all contiguous, K % 8 == 0, N % 4 == 0 (the caller checks).
 */
#include <immintrin.h>
#include <stdint.h>

#define ROWS_PER_STEP 4     /* weight rows read together: 4 prefetch streams per thread */
#define ACTIVATIONS_PER_PASS 2
#define PREFETCH_ROWS 8     /* how far ahead of the current weight row to prefetch */

static inline __m256 widen_bf16(const uint16_t* p) {
    __m128i v = _mm_loadu_si128((const __m128i*)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

static inline __m256 widen_fp16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
}

static inline float horizontal_sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

/* Weight rows are split between threads; activation rows go ACTIVATIONS_PER_PASS at a time. */
#define DEFINE_LINEAR(NAME, WIDEN)                                                            \
void NAME(const float* x, const uint16_t* w, const float* bias, float* y,                     \
          int64_t M, int64_t N, int64_t K) {                                                  \
    for (int64_t m0 = 0; m0 < M; m0 += ACTIVATIONS_PER_PASS) {                                \
        const int count = M - m0 < ACTIVATIONS_PER_PASS ? (int)(M - m0) : ACTIVATIONS_PER_PASS; \
        _Pragma("omp parallel for schedule(static)")                                          \
        for (int64_t o = 0; o < N; o += ROWS_PER_STEP) {                                      \
            __m256 acc[ACTIVATIONS_PER_PASS][ROWS_PER_STEP];                                  \
            for (int m = 0; m < ACTIVATIONS_PER_PASS; ++m)                                    \
                for (int r = 0; r < ROWS_PER_STEP; ++r) acc[m][r] = _mm256_setzero_ps();      \
            const uint16_t* rows = w + o * K;                                                 \
            for (int64_t i = 0; i < K; i += 8) {                                              \
                if ((i & 31) == 0 && o + PREFETCH_ROWS < N)                                   \
                    for (int r = 0; r < ROWS_PER_STEP; ++r)                                   \
                        _mm_prefetch((const char*)(rows + (PREFETCH_ROWS + r) * K + i), _MM_HINT_T0); \
                __m256 wr[ROWS_PER_STEP];                                                     \
                for (int r = 0; r < ROWS_PER_STEP; ++r) wr[r] = WIDEN(rows + r * K + i);      \
                for (int m = 0; m < count; ++m) {                                             \
                    __m256 xv = _mm256_loadu_ps(x + (m0 + m) * K + i);                        \
                    for (int r = 0; r < ROWS_PER_STEP; ++r)                                   \
                        acc[m][r] = _mm256_fmadd_ps(wr[r], xv, acc[m][r]);                    \
                }                                                                             \
            }                                                                                 \
            for (int m = 0; m < count; ++m)                                                   \
                for (int r = 0; r < ROWS_PER_STEP; ++r)                                       \
                    y[(m0 + m) * N + o + r] = horizontal_sum(acc[m][r]) + (bias ? bias[o + r] : 0.0f); \
        }                                                                                     \
    }                                                                                         \
}

DEFINE_LINEAR(bf16_linear, widen_bf16)
DEFINE_LINEAR(fp16_linear, widen_fp16)
