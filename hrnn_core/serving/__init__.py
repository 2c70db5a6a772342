"""Serving layer: the recommender behind the service and the batch export."""
