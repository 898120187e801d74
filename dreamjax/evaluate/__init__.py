"""Evaluation as in DreamFusion (§4, Table 1): CLIP R-Precision of Color and Geo renders of finished runs.

  python -m dreamjax.evaluate --workdirs runs/coco153/* --clip openai/clip-vit-base-patch32 --out results/table
  python -m dreamjax.evaluate.launch --captions coco153 --config configs/dreamfusion.py --seeds 0,1 --shard 0/4

Modules, one idea each: `retrieval` (R@1 arithmetic, mean ± SEM), `preprocess` (CLIP's image preprocessing),
`clip_model` (FlaxCLIPModel + tokenizer from a hub id or folder, msgpack or safetensors), `protocol` (the views),
`harness` (scoring runs; toy-world runs with the toy classifier), `table` (Table 1 layout, JSON), `launch` (one run
per caption and seed, sharded, resumable).
"""
