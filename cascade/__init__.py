"""The cascade: rules, vector cache, classifier, LLM + RAG, human review; cheapest stage first."""
