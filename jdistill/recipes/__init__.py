"""Recipes: a teacher policy + recipe state + a pure loss. One file per recipe."""

from jdistill.recipes.base import TEACHER_POLICIES, Recipe
from jdistill.recipes.kd import KnowledgeDistillation
from jdistill.recipes.supervised import Supervised

__all__ = ["TEACHER_POLICIES", "KnowledgeDistillation", "Recipe", "Supervised"]
