"""What any use of a finished model needs: decoding, the model folder, preprocessing, the predictor, the
review policy and the domain check. Imports nothing from the layers above."""
