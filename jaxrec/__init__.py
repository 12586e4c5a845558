"""jaxrec: self-attention sequence recall (seq2seq u2i) in JAX/Flax.

Modules, imports flowing downward only (`main` is the only one that reads flags):

  main            command line: flags -> configs -> train / eval / export
  train           Trainer (mesh, jitted step, checkpoint managers), the epoch loop, validation,
                  early stopping, preemption, the metrics log
  export          user + item vectors with raw ids to one .npz
  evaluate        user vectors in length blocks, full-ranking metrics
  step            LossConfig, OptimizerConfig, TrainState, loss_fn, the dense and row-sparse steps
  input_pipeline  typed Batch, BatchPlan (buckets, length split, slots, sampler, epoch order),
                  inference inputs, CSR helpers
  checkpoints     Orbax managers, model_config.json, restore
  model           Seq2Seq: item + position embeddings, encoder layers, output table
  attention       multi-head scaled dot-product attention (pure)
  masks           padding x subsequent mask -> -10000 bias (pure)
  loss            in-batch ("lbm") softmax with logQ, the full softmax (pure)
  metrics         ranks of targets, HR / NDCG / MRR (pure numpy)
  click_log       readers (note, sequences, pairs, csv), the synthetic log, vocab, leave-one-out
  recall          top-N unvisited items per user with faiss, the recall CLI (no JAX)
  embeddings      the exported .npz: load and validate (no JAX)
  errors, fileio, console   exit codes, atomic writes, progress lines

Importing the package is cheap on purpose: `jaxrec.recall` must run without JAX.
"""

__version__ = "0.1.0"
