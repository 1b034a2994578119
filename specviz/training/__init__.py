"""Training small drafters for a target model: prompts, target-generated data, distillation.

    specviz train-drafter --kind distilled --out assets/drafters/smollm2-135m-instruct

- `prompts.py`  the project's own training prompts (templates x topics), kept apart from the
                evaluation suite in assets/prompts.jsonl;
- `data.py`     the target generates continuations of those prompts; its top-K distributions
                and a token-frequency table (the VocabTrim list) are cached for reuse;
- `distill.py`  distils a few-layer drafter and Kangaroo adapters on that data, evaluates
                held-out agreement with the target and writes weights, configs and a model card;
- `predictor.py` fits SpecDec++'s acceptance predictor (`specviz train-predictor`);
- `diffusion.py` trains a masked-diffusion block drafter on the same data (`specviz train-diffusion`).
"""
