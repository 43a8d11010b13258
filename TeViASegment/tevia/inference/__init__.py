"""Inference: the Segmenter (encode once, decode many), the session every front end shares, the model-input
transforms, segment options, the image-domain check and the slice-by-slice volume pipeline."""
