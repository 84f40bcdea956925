"""One thin module per DVC stage: read params, call the library, write outputs atomically.

This layer is the only one that reads params.yaml; each `main(params_path)` is
what `recap <stage>` runs.
"""
