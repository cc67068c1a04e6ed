OPENQASM 3.0;
include "stdgates.inc";
// QAOA p=1 for MaxCut on the 4-node ring 0-1-2-3-0
input float[64] beta;
input float[64] gamma;
qubit[4] q;
h q[0]; h q[1]; h q[2]; h q[3];
cx q[0], q[1]; rz(2 * gamma) q[1]; cx q[0], q[1];
cx q[1], q[2]; rz(2 * gamma) q[2]; cx q[1], q[2];
cx q[2], q[3]; rz(2 * gamma) q[3]; cx q[2], q[3];
cx q[3], q[0]; rz(2 * gamma) q[0]; cx q[3], q[0];
rx(2 * beta) q[0]; rx(2 * beta) q[1]; rx(2 * beta) q[2]; rx(2 * beta) q[3];
