"""The keras-clip application: the command line (`cli`), the commands behind
it (`commands`), the resumable training driver (`training`) and its folder's
files (`checkpoints`), progress output for logs (`progress`), the demo and
its plots; `errors.RunError` is the one-line error the CLI prints. It uses
the `keras_clip` library; the library never imports it.

`keras_clip_app.cli` parses flags without importing Keras, so that
`--backend` takes effect and `--help` is fast.
"""
