"""What a network costs: activity (spikes, SynOps), energy estimates and Loihi 2 resources."""
