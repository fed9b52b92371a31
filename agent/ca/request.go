package ca

func (c *CA) applyRequest() error { return nil }
