"""analysis: numbers, figures and exports about ViT attention maps (DESIGN section 5).

Metric modules (`normalization`, `similarity`, `head_diversity`, `locality`, `rollout`, `cka`,
`localisation`) are pure functions on numpy arrays. `attribution` and `features` take a torch model.
`per_image`, `dataset` run models through `refiner.capture_attention`; `figures` and `export` turn the
results into plotly figures and files; `cli_analyze` is ``refiner analyze``.

Conventions: a model's maps for one image are ``(L, H, N, N)`` (rows are queries, columns keys) with
N = K + Gh * Gw tokens: K prefix tokens (CLS, distillation, registers) then the patches in row-major
grid order. K, the grid (Gh, Gw) and the patch size (ph, pw) in pixels are always passed explicitly.
This package never imports ``streamlit`` or ``app``.
"""
