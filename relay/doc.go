// Package relay will hold the edge's STUN/TURN media relay on pion/turn with
// its policies (denied peers, quotas, bandwidth, lifetimes) and the
// packet-forwarding engine shared with the A/V MCU. Nothing is implemented
// here yet: the A/V Edge is issue 3.
package relay
