"""Research tools beside exact unlearning: approximate unlearning baselines, privacy evaluation
(membership-inference attacks), the comparison harness and the cost model."""
