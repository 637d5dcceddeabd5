# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial: a CNN on MNIST, shown
#
# fnnet grew from a notebook that trains a small CNN on MNIST in numpy: a 3x3 convolution, a
# ReLU, a 2x2 max pooling, a dense layer of 64, a dense layer of 10, softmax cross-entropy and
# SGD on batches of 2. This notebook rebuilds that network with fnnet, trains it, and shows
# what it learned and where it fails; then a wider CNN, a layer of your own, and the same
# model served from ONNX.
#
# **To run it** (from a checkout; about a minute on two cores):
#
# ```bash
# pip install '.[plot,onnx]' jupyterlab   # fnnet with its compiled kernels, matplotlib, onnx, onnxruntime
# jupyter lab docs/tutorial.py            # (jupytext opens it as a notebook; or: nox -s notebook)
# ```
#
# MNIST is read from `$FNNET_DATA_DIR`, your cache folder, or downloaded once and checked
# ([data](data.md)).

# %%
import matplotlib.pyplot as plt
import numpy as np

import fnnet as fn

ds = fn.data.load("mnist")  # Dataset: .train, .val, .test, each a Split of .x (N, 1, 28, 28) and .y (N,)
print(len(ds.train), "training images,", len(ds.val), "for validation,", len(ds.test), "for the test")

fig, axes = plt.subplots(1, 10, figsize=(10, 1.3))
for ax, image, label in zip(axes, ds.train.x, ds.train.y):
    ax.imshow(image[0], cmap="gray")
    ax.set_title(int(label))
    ax.axis("off")
plt.show()

# %% [markdown]
# ## The seed network
#
# A model is a `serial` of layers; `init` gives its params (an immutable tree of arrays) and
# its output shape, from the input shape alone. `train_step` folds model, loss and optimizer
# into one pure function `step(state, batch) -> (state, metrics)`; `jit` makes it fast and
# gives the same bits.

# %%
seed_net = fn.serial(
    fn.conv2d(1, 3), fn.relu(), fn.max_pool2d(2), fn.flatten(),
    fn.dense(64), fn.relu(), fn.dense(10),
)
params, out_shape = seed_net.init(fn.random.key(0), (1, 28, 28))
fn.layers.summary(seed_net, (1, 28, 28))  # (shapes from init alone)

opt = fn.optim.sgd(0.02)
step = fn.jit(fn.train_step(seed_net, fn.softmax_cross_entropy, opt))
state = fn.TrainState.create(params, opt)
batches = fn.data.sample_batches(fn.random.key(1), len(ds.train), 2)  # batches of 2, as the tutorial

losses, curve = [], []
for i in range(1, 3001):
    idx = next(batches)
    state, metrics = step(state, (ds.train.x[idx], ds.train.y[idx]))
    losses.append(metrics["loss"])
    if i % 250 == 0:
        val = fn.predict(seed_net, state.params, ds.val.x[:2000]).argmax(1) == ds.val.y[:2000]
        curve.append((i, val.mean()))
print("validation accuracy after 3000 steps of 2:", curve[-1][1])

# %% [markdown]
# ## Learning curves
#
# The loss of each batch of two is noisy; its running mean shows the trend. Validation
# accuracy is measured on 2,000 held-out images every 250 steps.

# %%
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
a.plot(losses, alpha=0.25, label="each batch")
a.plot(np.convolve(losses, np.ones(100) / 100, mode="valid"), label="mean of 100")
a.set(xlabel="step", ylabel="training loss", ylim=(0, 2.5))
a.legend()
b.plot(*zip(*curve), marker="o")
b.set(xlabel="step", ylabel="validation accuracy")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What the filter learned
#
# The seed network has one 3x3 filter. Its weights, and what it makes of one digit (after the
# ReLU: the feature map the dense layers see, before pooling):

# %%
w = state.params["conv2d_0"]["w"][0, 0]
digit = ds.test.x[:1]
head = fn.serial(fn.conv2d(1, 3), fn.relu())  # the seed network's first two layers, with its params
feature, _ = head.forward({"conv2d_0": state.params["conv2d_0"], "relu_1": {}}, digit)
fig, axes = plt.subplots(1, 3, figsize=(8, 2.8))
axes[0].imshow(digit[0, 0], cmap="gray")
axes[0].set_title(f"a test digit ({ds.test.y[0]})")
axes[1].imshow(w, cmap="RdBu", vmin=-abs(w).max(), vmax=abs(w).max())
axes[1].set_title("the learned 3x3 filter")
axes[2].imshow(feature[0, 0], cmap="viridis")
axes[2].set_title("its feature map")
for ax in axes:
    ax.axis("off")
plt.show()

# %% [markdown]
# ## Its mistakes
#
# `predict` runs the model in eval mode, in chunks, on every core. The test set is read once,
# here, for the final figure.

# %%
pred = fn.predict(seed_net, state.params, ds.test.x).argmax(1)
print("test accuracy:", (pred == ds.test.y).mean())
wrong = np.flatnonzero(pred != ds.test.y)[:24]
fig, axes = plt.subplots(3, 8, figsize=(10, 4.2))
for ax, i in zip(axes.flat, wrong):
    ax.imshow(ds.test.x[i, 0], cmap="gray")
    ax.set_title(f"{pred[i]} (is {ds.test.y[i]})", color="red", fontsize=9)
    ax.axis("off")
plt.suptitle("test images it gets wrong: predicted (true)")
plt.show()

# %% [markdown]
# The confusion matrix says which digits it takes for which (rows: the true digit, columns:
# the prediction):

# %%
confusion = fn.metrics.confusion_matrix(ds.test.y, pred, 10)
fig, ax = plt.subplots(figsize=(4.6, 4))
im = ax.imshow(np.log1p(confusion), cmap="Blues")
for t in range(10):
    for p in range(10):
        if confusion[t, p]:
            ax.text(p, t, confusion[t, p], ha="center", va="center", fontsize=6,
                    color="white" if t == p else "black")
ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10))
plt.show()

# %% [markdown]
# ## A wider CNN, in a few lines
#
# The pipeline's default CNN: two conv blocks of 16 and 32 filters, Adam with a cosine
# schedule. One epoch already passes 98 %. Its 16 first-layer filters are edge and stroke
# detectors:

# %%
cnn = fn.serial(
    fn.conv2d(16, 3), fn.relu(), fn.max_pool2d(2),
    fn.conv2d(32, 3), fn.relu(), fn.max_pool2d(2),
    fn.flatten(), fn.dense(128), fn.relu(), fn.dense(10),
)
params, _ = cnn.init(fn.random.key(0), (1, 28, 28))
opt = fn.optim.adam(fn.optim.cosine_decay(2e-3, 782, warmup_steps=50))
step = fn.jit(fn.train_step(cnn, fn.softmax_cross_entropy, opt))
state = fn.TrainState.create(params, opt)
for idx in fn.data.epoch_batches(fn.random.key(1), len(ds.train), 64):
    state, metrics = step(state, (ds.train.x[idx], ds.train.y[idx]))
    if state.step == 782:
        break
val = (fn.predict(cnn, state.params, ds.val.x).argmax(1) == ds.val.y).mean()
print("validation accuracy after one epoch:", val)

filters = state.params["conv2d_0"]["w"][:, 0]
fig, axes = plt.subplots(2, 8, figsize=(8, 2.2))
for ax, f in zip(axes.flat, filters):
    ax.imshow(f, cmap="RdBu", vmin=-abs(f).max(), vmax=abs(f).max())
    ax.axis("off")
plt.suptitle("the 16 learned filters of the first layer")
plt.show()

# %% [markdown]
# And what those 16 filters make of the test digit above: each feature map lights up where
# its stroke or edge is.

# %%
head = fn.serial(fn.conv2d(16, 3), fn.relu())
maps, _ = head.forward({"conv2d_0": state.params["conv2d_0"], "relu_1": {}}, digit)
fig, axes = plt.subplots(2, 8, figsize=(8, 2.3))
for ax, m in zip(axes.flat, maps[0]):
    ax.imshow(m, cmap="viridis")
    ax.axis("off")
plt.suptitle(f"the first layer's 16 feature maps of the {ds.test.y[0]}")
plt.show()

# %% [markdown]
# ## A layer of your own
#
# `elementwise(name, fwd, bwd)` makes a layer without params from a forward and a backward
# function (each writes into `out`, a buffer the step reuses); an `onnx=` mapping lets the
# model leave as ONNX. Swish, `x * sigmoid(x)`:

# %%
def swish_fwd(x, out):
    np.multiply(x, 1 / (1 + np.exp(-x)), out=out)
    return out


def swish_bwd(x, dy, out):
    s = 1 / (1 + np.exp(-x))
    np.multiply(dy, s * (1 + x * (1 - s)), out=out)
    return out


def swish_onnx(graph, params, state, x, shape):
    return graph.op("Mul", x, graph.op("Sigmoid", x))


swish = fn.layers.elementwise("swish", swish_fwd, swish_bwd, grad_from_input=True, onnx=swish_onnx)
mine = fn.serial(fn.conv2d(8, 3), swish, fn.max_pool2d(2), fn.flatten(), fn.dense(10))
params, _ = mine.init(fn.random.key(3), (1, 28, 28))
opt = fn.optim.adam(1e-3)
step = fn.jit(fn.train_step(mine, fn.softmax_cross_entropy, opt))
state = fn.TrainState.create(params, opt)
for idx, _ in zip(fn.data.epoch_batches(fn.random.key(4), len(ds.train), 64), range(300)):
    state, metrics = step(state, (ds.train.x[idx], ds.train.y[idx]))
print("swish CNN, 300 steps: validation accuracy",
      (fn.predict(mine, state.params, ds.val.x).argmax(1) == ds.val.y).mean())

# %% [markdown]
# ## The same model, served from ONNX
#
# `to_onnx` writes what `predict` computes; onnxruntime (or any ONNX runtime) serves it
# without fnnet.

# %%
import onnxruntime as ort  # noqa: E402  (the extra: pip install '.[onnx]')

fn.export.to_onnx(mine, state.params, (1, 28, 28), "swish_cnn.onnx")
session = ort.InferenceSession("swish_cnn.onnx", providers=["CPUExecutionProvider"])
served = session.run(None, {"x": ds.test.x[:1000]})[0]
here = fn.predict(mine, state.params, ds.test.x[:1000])
print("largest difference between onnxruntime and fnnet:", np.abs(served - here).max())
assert np.abs(served - here).max() <= 1e-4
