"""The learning engine of a node (issue 5). Light on purpose: importing this imports no torch.

Map (data and checks first, then models, then the agent that ties them):

- :mod:`.problems`   the embedded task: a seeded generator of one-line functions over 12 categories; :class:`Problem`.
- :mod:`.data`       HumanEval/MBPP-style JSONL I/O, per-client Dirichlet split, disjoint task splits.
- :mod:`.sandbox`    contained execution of generated code (nsjail, else an rlimit + audit-hook guard);
  :mod:`.sandbox_runner` is the stdlib-only script that runs inside it.
- :mod:`.passk`      unbiased Pass@k (Chen et al. 2021) and confidence intervals.
- :mod:`.embedded`   offline-built tiny models and BPE tokenizers, cached as HF dirs; ``embedded:<name>``.
- :mod:`.lora`       LoRA target modules per family; attaching a PEFT adapter.
- :mod:`.encoding`   prompt and completion tokenized apart, then concatenated; batch collation.
- :mod:`.generation` batched greedy/sampled decoding, optional top-k log-probabilities.
- :mod:`.package`    the versioned msgpack knowledge package and its strict decoder.
- :mod:`.distill`    Eq. 2's sparse temperature-scaled KL (the text path is plain CE).
- :mod:`.schedule`   alpha/temperature schedules, warm-up, Eq. 3's reward.
- :mod:`.targeting`  targeted, verified exchanges: weak categories asked for, prompts answered, credit per teacher.
- :mod:`.state`      crash-safe per-round persistence of weights, optimizer and metadata.
- :mod:`.agent`      :class:`~.agent.Agent`: local epoch, validation loss, Pass@k, dev-set competence and
  exchange request, verified teacher package, distillation from one or several packages with rewards, profile.
- :mod:`.central`    baselines: the Central-KD server's ensemble package, and LocalOnly.
"""
