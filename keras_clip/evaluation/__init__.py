"""Evaluation: zero-shot classification with prompt ensembles, retrieval
recall@K, the linear probe, the prompt templates, and `fit` callbacks that run
them during training. Evaluators take encode functions and arrays.
"""

from keras_clip.evaluation import linear_probe
from keras_clip.evaluation import prompts
from keras_clip.evaluation import retrieval
from keras_clip.evaluation import zero_shot
from keras_clip.evaluation.callbacks import RetrievalEvaluation
from keras_clip.evaluation.callbacks import TimeBudgetCosineDecay
from keras_clip.evaluation.callbacks import ZeroShotEvaluation
from keras_clip.evaluation.zero_shot import ZeroShotClassifier
