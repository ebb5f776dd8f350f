/*
 * CPU kernels of itop's sparse linear layer (itop/sparse/native.py builds and loads this file).
 *
 * A layer y = x W^T + b has an unstructured sparse W (CSR: crow, col, val; int32 indices,
 * float32 values). The kernels work on *transposed, padded* activations: a buffer T of shape
 * (features x ld), ld = the batch rounded up to BT (32) with zero columns, so that each active
 * weight reads one contiguous run of BT batch entries and BT accumulators stay in vector
 * registers for a whole row of W. Three products, each costed by the active weights alone:
 *
 *   itop_transpose_pad  T (f x ld) <- X (n x f)                  row-major -> padded transpose
 *   itop_spmm           Y (n x r)  <- A (r x f, CSR) . T + bias  forward (A = W) and input
 *                                                                gradient (A = W^T, values read
 *                                                                through a permutation)
 *   itop_sddmm          dv[p]      <- sum_b G[row p, b] X[col p, b]
 *                                                                weight gradient at the active
 *                                                                positions only
 *
 * itop_spmm writes Y row-major directly (each task transposes its tile in cache), so the layer
 * needs no transposes in torch. Work is split over (batch tile x block of rows) with OpenMP;
 * every output element is computed by one thread in a fixed order, so results are the same
 * for every thread count and run. The vector type below is GCC/Clang's generic vector
 * extension: it compiles to AVX-512, AVX2, NEON or scalar code, whatever -march gives.
 */
#include <stddef.h>
#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#define BT 32       /* batch columns per tile: 2 AVX-512 / 4 AVX2 registers per accumulator */
#define VW 16       /* floats per vector */
#define NV (BT / VW)
#define RB 64       /* rows of A per task */

typedef float vec __attribute__((vector_size(VW * sizeof(float))));
typedef float uvec __attribute__((vector_size(VW * sizeof(float)), aligned(4)));

int itop_abi_version(void) { return 1; }

int itop_tile(void) { return BT; }

int itop_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

static int imin(int a, int b) { return a < b ? a : b; }

void itop_transpose_pad(int n, int f, int ld, const float *x, float *t, int nthreads) {
    (void)nthreads;
    /* Blocks of 32 samples x 64 features: reads and writes stay within a few cache lines. */
    int nb = ld / BT, nf = (f + 63) / 64;
    #pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads)
    for (int k = 0; k < nb; k++) {
        for (int q = 0; q < nf; q++) {
            int b0 = k * BT, j0 = q * 64, j1 = imin(j0 + 64, f);
            int valid = imin(BT, n - b0);
            for (int j = j0; j < j1; j++) {
                float *dst = t + (size_t)j * ld + b0;
                for (int s = 0; s < valid; s++) dst[s] = x[(size_t)(b0 + s) * f + j];
                for (int s = valid; s < BT; s++) dst[s] = 0.0f;
            }
        }
    }
}

/* One block of rows [i0, i1) of A times batch tile k of T; tile[(i - i0) * BT + s]. */
static void rows_times_tile(int i0, int i1, const int32_t *crow, const int32_t *col,
                            const float *val, const int32_t *perm, const float *tk, int ld,
                            const float *bias, float *tile) {
    for (int i = i0; i < i1; i++) {
        vec a[NV], c[NV];
        for (int q = 0; q < NV; q++) { a[q] = (vec){0}; c[q] = (vec){0}; }
        int p = crow[i], e = crow[i + 1];
        /* Two independent accumulators hide the FMA latency. */
        for (; p + 1 < e; p += 2) {
            const uvec *u = (const uvec *)(tk + (size_t)col[p] * ld);
            const uvec *w = (const uvec *)(tk + (size_t)col[p + 1] * ld);
            float v0 = perm ? val[perm[p]] : val[p];
            float v1 = perm ? val[perm[p + 1]] : val[p + 1];
            for (int q = 0; q < NV; q++) { a[q] += v0 * u[q]; c[q] += v1 * w[q]; }
        }
        if (p < e) {
            const uvec *u = (const uvec *)(tk + (size_t)col[p] * ld);
            float v0 = perm ? val[perm[p]] : val[p];
            for (int q = 0; q < NV; q++) a[q] += v0 * u[q];
        }
        float b = bias ? bias[i] : 0.0f;
        uvec *dst = (uvec *)(tile + (size_t)(i - i0) * BT);
        for (int q = 0; q < NV; q++) dst[q] = a[q] + c[q] + b;
    }
}

void itop_spmm(int n, int r, int ld, const int32_t *crow, const int32_t *col, const float *val,
               const int32_t *perm, const float *t, const float *bias, float *y, int nthreads) {
    (void)nthreads;
    int nb = ld / BT, nr = (r + RB - 1) / RB;
    #pragma omp parallel num_threads(nthreads)
    {
        float tile[RB * BT] __attribute__((aligned(64)));
        #pragma omp for collapse(2) schedule(dynamic, 1)
        for (int k = 0; k < nb; k++) {
            for (int q = 0; q < nr; q++) {
                int b0 = k * BT, i0 = q * RB, i1 = imin(i0 + RB, r);
                int valid = imin(BT, n - b0);
                rows_times_tile(i0, i1, crow, col, val, perm, t + b0, ld, bias, tile);
                for (int s = 0; s < valid; s++) {
                    float *yr = y + (size_t)(b0 + s) * r;
                    for (int i = i0; i < i1; i++) yr[i] = tile[(i - i0) * BT + s];
                }
            }
        }
    }
}

void itop_sddmm(int r, int ld, const int32_t *crow, const int32_t *col, const float *g,
                const float *t, float *dv, int nthreads) {
    (void)nthreads;
    int nr = (r + RB - 1) / RB, nvec = ld / VW;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int q = 0; q < nr; q++) {
        int i1 = imin(q * RB + RB, r);
        for (int i = q * RB; i < i1; i++) {
            const uvec *gi = (const uvec *)(g + (size_t)i * ld);
            for (int p = crow[i]; p < crow[i + 1]; p++) {
                const uvec *xj = (const uvec *)(t + (size_t)col[p] * ld);
                vec a = (vec){0}, c = (vec){0};
                int m = 0;
                for (; m + 1 < nvec; m += 2) { a += gi[m] * xj[m]; c += gi[m + 1] * xj[m + 1]; }
                if (m < nvec) a += gi[m] * xj[m];
                a += c;
                float s = 0.0f;
                for (int l = 0; l < VW; l++) s += a[l];
                dv[p] = s;
            }
        }
    }
}
