/* Attention of one new query per sequence over its keys and values (a decoding step).
 *
 * PyTorch's CPU attention spends most of a one-query step on setup and on casting a 16-bit
 * cache to float32; here each (sequence, head) reads its keys and values in place, widens them
 * in registers and keeps scores and sums in float32. Grouped-query heads share a KV head.
 *
 * q: [B, H, D] float32 (row stride q_stride, heads contiguous); k, v: [B, KV, L, D] with D
 * contiguous and the other strides given in elements; row b attends positions
 * first[b]..last[b] (clamped to 0..L-1); out: [B, H * D] float32; scratch: B * H * L floats.
 * D % 8 == 0, D <= 8 * MAX_CHUNKS, H % KV == 0 (the caller checks).
 */
#include <math.h>

#include "avx2.h"

#define MAX_CHUNKS 32 /* head_dim up to 256 */

/* One head: scores, softmax, weighted sum of values. CHUNKS is a constant where it matters
 * (head_dim 64 and 128) so that the query and the sums stay in registers. */
#define DEFINE_HEAD(NAME, T, LOAD)                                                            \
static inline void NAME(const float* query, const T* keys, const T* values, int64_t k_pos,    \
                        int64_t v_pos, int64_t start, int64_t end, float* scores, float* out, \
                        const int chunks, float scale) {                                      \
    __m256 qv[MAX_CHUNKS], sum[MAX_CHUNKS];                                                   \
    for (int c = 0; c < chunks; ++c) { qv[c] = _mm256_loadu_ps(query + 8 * c); sum[c] = _mm256_setzero_ps(); } \
    float best = -INFINITY, total = 0.0f;                                                     \
    for (int64_t s = start; s <= end; ++s) {                                                  \
        const T* key = keys + s * k_pos;                                                      \
        __m256 even = _mm256_setzero_ps(), odd = _mm256_setzero_ps();                         \
        for (int c = 0; c + 1 < chunks; c += 2) {                                             \
            even = _mm256_fmadd_ps(LOAD(key + 8 * c), qv[c], even);                           \
            odd = _mm256_fmadd_ps(LOAD(key + 8 * c + 8), qv[c + 1], odd);                     \
        }                                                                                     \
        if (chunks & 1) even = _mm256_fmadd_ps(LOAD(key + 8 * (chunks - 1)), qv[chunks - 1], even); \
        const float score = horizontal_sum(_mm256_add_ps(even, odd)) * scale;                 \
        scores[s] = score;                                                                    \
        best = score > best ? score : best;                                                   \
    }                                                                                         \
    for (int64_t s = start; s <= end; ++s) {                                                  \
        scores[s] = expf(scores[s] - best);                                                   \
        total += scores[s];                                                                   \
    }                                                                                         \
    for (int64_t s = start; s <= end; ++s) {                                                  \
        const T* value = values + s * v_pos;                                                  \
        const __m256 p = _mm256_set1_ps(scores[s]);                                           \
        for (int c = 0; c < chunks; ++c) sum[c] = _mm256_fmadd_ps(LOAD(value + 8 * c), p, sum[c]); \
    }                                                                                         \
    const __m256 norm = _mm256_set1_ps(1.0f / total);                                         \
    for (int c = 0; c < chunks; ++c) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(sum[c], norm)); \
}

#define DEFINE_ATTENTION(NAME, HEAD, T, LOAD)                                                 \
DEFINE_HEAD(HEAD, T, LOAD)                                                                    \
void NAME(const float* q, int64_t q_stride, const T* k, const T* v,                           \
          int64_t k_batch, int64_t k_head, int64_t k_pos, int64_t v_batch, int64_t v_head, int64_t v_pos, \
          const int64_t* first, const int64_t* last, float* out, float* scratch,              \
          int64_t B, int64_t H, int64_t KV, int64_t L, int64_t D, float scale) {              \
    const int64_t group = H / KV;                                                             \
    const int chunks = (int)(D / 8);                                                          \
    _Pragma("omp parallel for schedule(static)")                                              \
    for (int64_t task = 0; task < B * H; ++task) {                                            \
        const int64_t b = task / H, h = task % H, g = h / group;                              \
        const int64_t start = first[b] < 0 ? 0 : first[b], end = last[b] >= L ? L - 1 : last[b]; \
        const float* query = q + b * q_stride + h * D;                                        \
        const T* keys = k + b * k_batch + g * k_head;                                         \
        const T* values = v + b * v_batch + g * v_head;                                       \
        float* o = out + task * D;                                                            \
        if (chunks == 8)                                                                      \
            HEAD(query, keys, values, k_pos, v_pos, start, end, scratch + task * L, o, 8, scale); \
        else if (chunks == 16)                                                                \
            HEAD(query, keys, values, k_pos, v_pos, start, end, scratch + task * L, o, 16, scale); \
        else                                                                                  \
            HEAD(query, keys, values, k_pos, v_pos, start, end, scratch + task * L, o, chunks, scale); \
    }                                                                                         \
}

DEFINE_ATTENTION(attend_one_query_bf16, attend_head_bf16, uint16_t, load_bf16)
DEFINE_ATTENTION(attend_one_query_fp16, attend_head_fp16, uint16_t, load_fp16)
DEFINE_ATTENTION(attend_one_query_fp32, attend_head_fp32, float, load_fp32)
