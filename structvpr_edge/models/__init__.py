"""Models (torch): backbones, aggregators, teacher and student."""
