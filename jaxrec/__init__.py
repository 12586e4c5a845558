"""jaxrec: self-attention sequence recall (seq2seq u2i) in JAX/Flax.

Modules, imports flowing downward only (flags are generated from `config`; only the entry
points `main`, `recall_cli` and `serve` parse them, and library code never reads them):

  main            command line: flags -> Config -> api (train / eval / export / export_model / inspect)
  serve           HTTP recall for fresh click sequences: micro-batching, hot reload (FastAPI, uvicorn)
  recall_cli      `python -m jaxrec.recall`: flags -> RecallConfig -> recall.recall_to_file (no JAX)
  api             the Python API: each mode as a function of a Config
  workdir         a run's files and decisions: new / resume / warm start, what the run records,
                  the workdir's vocabulary for eval and export
  train           Trainer (mesh, jitted step, checkpoint managers), the epoch loop, validation,
                  early stopping, preemption, summary.json and _SUCCESS
  saves           checkpoint saves watched for failures (background ones too) and a removed workdir
  run_log         metrics.jsonl / TensorBoard rows and the validation progress of a run
  warm_start      --init_from: yesterday's vocabulary and tables grown to today's log
  export          user + item vectors with raw ids and metadata to one .npz
  model_export    the portable artifact: jax.export user tower (and ONNX), item vectors, vocabulary
  evaluate        user vectors in length blocks, full-ranking metrics
  hosts           data shards: which users a process holds, ShardedPlan (the shards' batches
                  concatenated, shapes agreed), gathering ranks and vectors across processes
  step            TrainState, loss_fn, the dense and row-sparse steps
  input_pipeline  typed Batch, BatchPlan (buckets, length split, sampler, epoch order), prefetch,
                  inference inputs
  packing         first-fit packing, real slots and loss levels of a batch (pure numpy)
  checkpoints     Orbax managers, model_config.json, train_config.json, checkpoint selection
  model           Seq2Seq: item [+ feature] + position embeddings, encoder layers, output table
  attention       multi-head scaled dot-product attention (pure)
  masks           padding x subsequent mask -> -10000 bias (pure)
  filters         the causal low-pass filter of --encoder=bsarec (pure)
  loss            in-batch ("lbm") softmax with logQ, the full softmax (pure)
  metrics         ranks of targets, HR / NDCG / MRR (pure numpy)
  config          the configuration tree: every option's default, help, bounds, checks, once
  holdout         which clicks train, validate and test: leave-one-out, time split, none
  vocab           the workdir's vocabulary: save, load, map a log onto it, fingerprint
  click_log       format, separator and compression detection, the text readers, --nulls, the synthetic log, describe
  item_features   --item_features tables (text, CSV, Parquet), cold items, the rows the model embeds
  arrow_log       CSV, pairs and Parquet through Apache Arrow, ids by dictionary encoding
  clicks          ClickLog (CSR clicks with raw ids) and timestamp parsing, shared by the readers
  embeddings      the exported .npz: load and validate (no JAX)
  recall          top-N unvisited items per user with faiss, recall_to_file (no JAX)
  recall_lists    recall lists to TSV, CSV, JSONL or Parquet by suffix, chunk by chunk, atomically (no JAX)
  errors, fileio, console   exit codes and one-line errors, atomic writes, progress lines

Importing the package is cheap on purpose: `jaxrec.recall` must run without JAX.
"""

__version__ = "0.1.0"
