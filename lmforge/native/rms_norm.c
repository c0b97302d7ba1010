/* RMSNorm of float32 rows: y = x / sqrt(mean(x^2) + eps) * w, with AVX2.
 *
 * PyTorch's CPU rms_norm is a chain of about seven small kernels (pow, mean, add, rsqrt, mul,
 * ...); a decoding step calls it twice per layer on one row, where the chain's overhead is all
 * of its cost. x, y: [M, D] contiguous; w: [D]; D % 8 == 0 (the caller checks).
 */
#include <math.h>

#include "avx2.h"

static void normalize_row(const float* x, const float* w, float* y, int64_t D, float eps) {
    __m256 even = _mm256_setzero_ps(), odd = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= D; i += 16) {
        const __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        even = _mm256_fmadd_ps(a, a, even);
        odd = _mm256_fmadd_ps(b, b, odd);
    }
    for (; i < D; i += 8) {
        const __m256 a = _mm256_loadu_ps(x + i);
        even = _mm256_fmadd_ps(a, a, even);
    }
    const __m256 scale = _mm256_set1_ps(1.0f / sqrtf(horizontal_sum(_mm256_add_ps(even, odd)) / (float)D + eps));
    for (i = 0; i < D; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale), _mm256_loadu_ps(w + i)));
}

void rms_norm_f32(const float* x, const float* w, float* y, int64_t M, int64_t D, float eps) {
    if (M < 16) {  /* a thread team costs more than a few rows */
        for (int64_t m = 0; m < M; ++m) normalize_row(x + m * D, w, y + m * D, D, eps);
        return;
    }
    #pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; ++m) normalize_row(x + m * D, w, y + m * D, D, eps);
}
