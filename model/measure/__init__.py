"""How the model is measured: evaluation, the engine against PyTorch, seams, speed, quantisation. Lab tools;
nothing here is shipped."""
