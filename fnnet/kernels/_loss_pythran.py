"""Pythran source of the fused softmax cross-entropy (compiled to fnnet.kernels._loss).

One pass per row instead of a dozen numpy calls: at small batches the calls, not the
arithmetic, are the cost. Numpy twin with the same signature: fnnet/kernels/loss.py.
"""
import numpy as np

# pythran export softmax_xent(float32[:,:], int64[:], float32[:,:])
# pythran export softmax_xent(float64[:,:], int64[:], float64[:,:])
def softmax_xent(logits, labels, dlogits):
    """Sum over rows of -log softmax(logits)[label] (float64), with dlogits = (softmax -
    onehot) / N written in place. Returns (loss_sum, status): status 0 ok, 1 a label out of
    range, 2 a NaN or inf logit (dlogits is then undefined)."""
    n, c = logits.shape
    inv_n = 1.0 / n
    total = 0.0
    for r in range(n):
        lab = labels[r]
        if lab < 0 or lab >= c:
            return total, 1
        m = logits[r, 0]
        for j in range(1, c):
            v = logits[r, j]
            if v > m:
                m = v
        if not (m - m == 0):  # NaN or +inf in the row (a NaN never wins a comparison)
            return total, 2
        s = 0.0
        for j in range(c):  # exp in float64; dlogits holds it rounded, so recompute below
            s += np.exp(float(logits[r, j] - m))
        for j in range(c):
            dlogits[r, j] = 0
        for j in range(c):
            v = logits[r, j]
            if v != v:
                return total, 2
            p = np.exp(float(v - m)) / s
            if j == lab:
                p -= 1.0
            dlogits[r, j] = p * inv_n
        total += np.log(s) - float(logits[r, lab] - m)
    return total, 0
