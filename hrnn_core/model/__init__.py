"""Model layer: features, the HRNN-meta network, the trend term, the one scoring function, the inference engine."""
