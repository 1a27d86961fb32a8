"""How the model is trained: photos (fetch, pack, crops), degradations, training, weight averages."""
