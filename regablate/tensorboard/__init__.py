"""TensorBoard, written from its own protos (no TensorFlow): event files (records),
histograms (histogram), the HParams dashboard (hparams) and the view of many run dirs that
`regablate tb` shows (view). Torch-free.
"""
