/* y = x W^T (+ b) for float32 activations and bfloat16 or float16 weights, with AVX2 + FMA.
 *
 * One row or a few rows of activations (decoding) are bound by reading the weights once:
 * each weight row is widened to float32 in registers, multiplied into every activation row
 * and never written back, and rows ahead are prefetched. Sums are kept in float32.
 * x: [M, K] float32, w: [N, K] 16-bit, bias: [N] float32 or NULL, y: [M, N] float32;
 * all contiguous, K % 8 == 0, N % 4 == 0 (the caller checks).
 */
#include "avx2.h"

#define ROWS_PER_STEP 4     /* weight rows read together: 4 prefetch streams per thread */
#define ACTIVATIONS_PER_PASS 2
#define PREFETCH_ROWS 8     /* how far ahead of the current weight row to prefetch */

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

DEFINE_LINEAR(bf16_linear, load_bf16)
DEFINE_LINEAR(fp16_linear, load_fp16)
