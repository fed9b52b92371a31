package broker

import "math/rand/v2"

// newSeededRand returns a deterministic [0,1) source for tests.
func newSeededRand(seed uint64) func() float64 {
	r := rand.New(rand.NewPCG(seed, seed))
	return r.Float64
}
