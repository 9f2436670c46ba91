/* A fused 4-bit matmul for CPUs with AVX2 and FMA: y = x W^T, W stored as bitsandbytes keeps a
 * CPU nf4/fp4 layer (two 4-bit codes a byte, the first element in the high nibble, one float32
 * absmax per `blocksize` consecutive elements of the row-major weight).
 *
 * The default route dequantizes the whole matrix to float32 (writing 4 bytes a weight) and then
 * multiplies; this kernel reads the half byte a weight once, looks its code up in registers
 * (vpshufb on the codes' four byte planes) and multiplies in place: one pass over the 4-bit
 * weights. With one input row (a decoding step) each weight row is decoded and dotted in
 * registers; with more, it is decoded into a small buffer and dotted with four input rows at a
 * time. Rows of W are shared out between OpenMP threads.
 *
 * Built at run time by instructedit/model/fused4bit.py (cc -O3 -mavx2 -mfma -fopenmp).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The 16 float32 codes as four byte planes, each broadcast to both lanes for vpshufb. */
typedef struct { __m256i plane[4]; } Table;

static inline Table make_table(const float *code) {
    Table t;
    const uint8_t *bytes = (const uint8_t *)code;
    for (int b = 0; b < 4; b++) {
        uint8_t plane[16];
        for (int i = 0; i < 16; i++) plane[i] = bytes[4 * i + b];
        t.plane[b] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)plane));
    }
    return t;
}

/* The 32 weights of 16 bytes, decoded: out[f] holds, in lane 0, the high-nibble codes of bytes
 * 4f..4f+3 and, in lane 1, their low-nibble codes (ORDER below puts x the same way). One byte-plane
 * lookup (vpshufb) per plane for all 32 codes, then the planes interleaved into floats. */
static inline void decode32(const uint8_t *w, const Table *t, __m256 out[4]) {
    const __m128i bytes = _mm_loadu_si128((const __m128i *)w), nibble = _mm_set1_epi8(15);
    const __m256i idx = _mm256_set_m128i(_mm_and_si128(bytes, nibble),
                                         _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble));
    const __m256i p0 = _mm256_shuffle_epi8(t->plane[0], idx), p1 = _mm256_shuffle_epi8(t->plane[1], idx);
    const __m256i p2 = _mm256_shuffle_epi8(t->plane[2], idx), p3 = _mm256_shuffle_epi8(t->plane[3], idx);
    const __m256i low01 = _mm256_unpacklo_epi8(p0, p1), high01 = _mm256_unpackhi_epi8(p0, p1);
    const __m256i low23 = _mm256_unpacklo_epi8(p2, p3), high23 = _mm256_unpackhi_epi8(p2, p3);
    out[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(low01, low23));
    out[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(low01, low23));
    out[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(high01, high23));
    out[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(high01, high23));
}

/* ORDER: x's 32 columns of a chunk of 16 bytes as decode32 lays the weights out: position
 * 8f + t holds column 2 (4f + t) for t < 4 (high nibbles), 2 (4f + t - 4) + 1 for t >= 4. */
static inline int64_t order(int64_t position) {
    const int64_t f = position / 8, t = position % 8;
    return t < 4 ? 2 * (4 * f + t) : 2 * (4 * f + t - 4) + 1;
}

/* Every row's result is computed in the same order, whatever M and whichever path: per absmax
 * block, the chunks' four products accumulated in two 8-lane sums (f = 0, 2 and f = 1, 3), their
 * sum times the block's absmax added to the total, then the 8 lanes summed. A row's output is
 * therefore the same bitwise alone or in any batch. K and the blocksize are multiples of 32, so
 * a chunk of 32 weights never straddles a block. */

/* One input row (in ORDER) against row n of W, decoded in registers. first: the row's first
 * element's index in the flat weight. */
static inline float dot_row(const uint8_t *w_row, const float *absmax, int64_t first, int64_t K,
                            int64_t blocksize, const Table *t, const float *xp) {
    __m256 total = _mm256_setzero_ps(), f[4];
    for (int64_t start = 0; start < K;) {
        int64_t end = ((first + start) / blocksize + 1) * blocksize - first;
        if (end > K) end = K;
        __m256 a = _mm256_setzero_ps(), b = a;
        for (int64_t j = start; j < end; j += 32) {
            decode32(w_row + j / 2, t, f);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(xp + j), f[0], a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(xp + j + 8), f[1], b);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(xp + j + 16), f[2], a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(xp + j + 24), f[3], b);
        }
        total = _mm256_fmadd_ps(_mm256_add_ps(a, b), _mm256_set1_ps(absmax[(first + start) / blocksize]), total);
        start = end;
    }
    return hsum(total);
}

/* Row n of W's codes (unscaled, in ORDER) into row[K]. */
static void decode_row(const uint8_t *w_row, int64_t K, const Table *t, float *row) {
    __m256 f[4];
    for (int64_t j = 0; j < K; j += 32) {
        decode32(w_row + j / 2, t, f);
        for (int i = 0; i < 4; i++) _mm256_storeu_ps(row + j + 8 * i, f[i]);
    }
}

/* Four input rows (in ORDER, K apart) against a decoded row of W, each as dot_row computes it. */
static inline void dot_four(const float *row, const float *absmax, int64_t first, int64_t K,
                            int64_t blocksize, const float *x0, float out[4]) {
    const float *xs[4] = {x0, x0 + K, x0 + 2 * K, x0 + 3 * K};
    __m256 total[4], a[4], b[4];
    for (int i = 0; i < 4; i++) total[i] = _mm256_setzero_ps();
    for (int64_t start = 0; start < K;) {
        int64_t end = ((first + start) / blocksize + 1) * blocksize - first;
        if (end > K) end = K;
        for (int i = 0; i < 4; i++) a[i] = b[i] = _mm256_setzero_ps();
        for (int64_t j = start; j < end; j += 32) {
            const __m256 f0 = _mm256_loadu_ps(row + j), f1 = _mm256_loadu_ps(row + j + 8);
            const __m256 f2 = _mm256_loadu_ps(row + j + 16), f3 = _mm256_loadu_ps(row + j + 24);
            for (int i = 0; i < 4; i++) {
                a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(xs[i] + j), f0, a[i]);
                b[i] = _mm256_fmadd_ps(_mm256_loadu_ps(xs[i] + j + 8), f1, b[i]);
                a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(xs[i] + j + 16), f2, a[i]);
                b[i] = _mm256_fmadd_ps(_mm256_loadu_ps(xs[i] + j + 24), f3, b[i]);
            }
        }
        const __m256 scale = _mm256_set1_ps(absmax[(first + start) / blocksize]);
        for (int i = 0; i < 4; i++) total[i] = _mm256_fmadd_ps(_mm256_add_ps(a[i], b[i]), scale, total[i]);
        start = end;
    }
    for (int i = 0; i < 4; i++) out[i] = hsum(total[i]);
}

/* One input row (in ORDER) against a decoded row of W, as dot_row computes it. */
static inline float dot_one(const float *row, const float *absmax, int64_t first, int64_t K,
                            int64_t blocksize, const float *xp) {
    __m256 total = _mm256_setzero_ps();
    for (int64_t start = 0; start < K;) {
        int64_t end = ((first + start) / blocksize + 1) * blocksize - first;
        if (end > K) end = K;
        __m256 a = _mm256_setzero_ps(), b = a;
        for (int64_t j = start; j < end; j += 32) {
            a = _mm256_fmadd_ps(_mm256_loadu_ps(xp + j), _mm256_loadu_ps(row + j), a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(xp + j + 8), _mm256_loadu_ps(row + j + 8), b);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(xp + j + 16), _mm256_loadu_ps(row + j + 16), a);
            b = _mm256_fmadd_ps(_mm256_loadu_ps(xp + j + 24), _mm256_loadu_ps(row + j + 24), b);
        }
        total = _mm256_fmadd_ps(_mm256_add_ps(a, b), _mm256_set1_ps(absmax[(first + start) / blocksize]), total);
        start = end;
    }
    return hsum(total);
}

/* y[m, n] = sum_k x[m, k] W[n, k] for m < M, n < N.
 *   x: M x K float32, row stride ldx; w: N * K / 2 bytes; absmax: N * K / blocksize floats;
 *   code: the 16 float32 values of the 4-bit type; y: M x N float32, row stride ldy.
 * Needs K % 32 == 0 and blocksize % 32 == 0 (every bitsandbytes blocksize is). Returns 0, or -1
 * when the work space cannot be allocated (y is then untouched). */
int fused4bit_matmul(int64_t M, int64_t N, int64_t K, const float *x, int64_t ldx, const uint8_t *w,
                     const float *absmax, const float *code, int64_t blocksize, float *y, int64_t ldy,
                     int threads) {
    const Table table = make_table(code);
    if (threads < 1) threads = 1;
    /* work space: the inputs in ORDER, then one decoded row per thread */
    float *xs = (float *)aligned_alloc(32, (size_t)((M + threads) * K) * sizeof(float));
    if (!xs) return -1;
    for (int64_t m = 0; m < M; m++)
        for (int64_t j = 0; j < K; j++) xs[m * K + j] = x[m * ldx + (j / 32) * 32 + order(j % 32)];
#pragma omp parallel num_threads(threads)
    {
        float *row = xs + (M + omp_get_thread_num()) * K, four[4];
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            const uint8_t *w_row = w + n * (K / 2);
            if (M == 1) {
                y[n] = dot_row(w_row, absmax, n * K, K, blocksize, &table, xs);
                continue;
            }
            decode_row(w_row, K, &table, row);
            int64_t m = 0;
            for (; m + 4 <= M; m += 4) {
                dot_four(row, absmax, n * K, K, blocksize, xs + m * K, four);
                for (int i = 0; i < 4; i++) y[(m + i) * ldy + n] = four[i];
            }
            for (; m < M; m++) y[m * ldy + n] = dot_one(row, absmax, n * K, K, blocksize, xs + m * K);
        }
    }
    free(xs);
    return 0;
}

/* y[m, n] = sum_k x[m, k] W[n, k] for a float32 W (N x K, row stride ldw), each row in one order
 * (two 8-lane accumulators over alternate groups of 8 columns), so a row's output does not depend
 * on M. For few input rows (an output head while decoding) W is read once, streaming, which a
 * BLAS gemv on W's row-major layout does at about half the speed here. Needs K % 16 == 0. */
int rows_matmul_f32(int64_t M, int64_t N, int64_t K, const float *x, int64_t ldx, const float *w,
                    int64_t ldw, float *y, int64_t ldy, int threads) {
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const float *w_row = w + n * ldw;
        int64_t m = 0;
        for (; m + 2 <= M; m += 2) {
            const float *x0 = x + m * ldx, *x1 = x0 + ldx;
            __m256 a0 = _mm256_setzero_ps(), b0 = a0, a1 = a0, b1 = a0;
            for (int64_t k = 0; k < K; k += 16) {
                const __m256 u = _mm256_loadu_ps(w_row + k), v = _mm256_loadu_ps(w_row + k + 8);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + k), u, a0);
                b0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + k + 8), v, b0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + k), u, a1);
                b1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + k + 8), v, b1);
            }
            y[m * ldy + n] = hsum(_mm256_add_ps(a0, b0));
            y[(m + 1) * ldy + n] = hsum(_mm256_add_ps(a1, b1));
        }
        for (; m < M; m++) {
            const float *x0 = x + m * ldx;
            __m256 a0 = _mm256_setzero_ps(), b0 = a0;
            for (int64_t k = 0; k < K; k += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + k), _mm256_loadu_ps(w_row + k), a0);
                b0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + k + 8), _mm256_loadu_ps(w_row + k + 8), b0);
            }
            y[m * ldy + n] = hsum(_mm256_add_ps(a0, b0));
        }
    }
    return 0;
}
