//! A relay's forwarding rule, with no I/O: where a message that reaches a forwarder goes next.
//!
//! A node that claimed a name at a relay is reached through the relay's forwarder for that name
//! (a local address), and the relay knows the claimer's route from the relay (the return route
//! its claim arrived on, less the relay's own last hop). A message that reaches the forwarder
//! goes on with the forwarder's address replaced by that route and the rest of its onward route
//! after it; its return route and payload are unchanged (the driver then pushes the hop it
//! arrived by onto the return route, as for every message it routes, and lets that hop and the
//! claimer's channel reach each other: the replies go back that way).
//!
//! Both drivers forward by [`forward_onward`]: the engine (`engine/links.rs`, in the claimer's
//! channel, for the names registered with it) and the Python relay (`tether.services.relay`,
//! through `tether._core.forward_onward`). Whether a claimer is online, and what to tell the
//! sender when it is not, is the Python relay's decision alone: the engine forwards only for
//! names the relay registered with it while their claimer is connected, and hands the rest up.

use crate::error::Error;
use crate::route::{Address, MAX_HOPS};

/// The onward route of a message forwarded by a forwarder whose claimer is at `route` (the
/// forwarder's own address, first in `onward`, is replaced by it). Refused when `onward` is
/// empty (the message did not reach a forwarder) or the result would be longer than a route
/// may be.
pub fn forward_onward<'a>(
    route: impl IntoIterator<Item = Address<'a>>,
    onward: &[Address<'a>],
) -> Result<Vec<Address<'a>>, Error> {
    let Some((_, rest)) = onward.split_first() else {
        return Err(Error::Route(
            "a forwarded message needs the forwarder's address first in its onward route".into(),
        ));
    };
    let out: Vec<Address<'a>> = route.into_iter().chain(rest.iter().copied()).collect();
    if out.len() > MAX_HOPS {
        return Err(Error::Route(format!(
            "forwarded, its onward route would have {} addresses, the limit is {MAX_HOPS}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(t: u16, v: &[u8]) -> Address<'_> {
        Address {
            transport: t,
            value: v,
        }
    }

    #[test]
    fn the_forwarder_is_replaced_by_the_claimers_route() {
        let route = [a(0, b"tcp#3"), a(0, b"sc#2")];
        let onward = [a(0, b"forward_to_db"), a(0, b"sc#9.in"), a(0, b"outlet")];
        assert_eq!(
            forward_onward(route, &onward).unwrap(),
            vec![
                a(0, b"tcp#3"),
                a(0, b"sc#2"),
                a(0, b"sc#9.in"),
                a(0, b"outlet")
            ]
        );
        // An empty claim route (the claimer is this node's own channel): just the rest.
        assert_eq!(
            forward_onward([], &onward[..2]).unwrap(),
            vec![a(0, b"sc#9.in")]
        );
    }

    #[test]
    fn nothing_to_forward_and_overlong_routes_are_refused() {
        assert!(forward_onward([a(0, b"x")], &[]).is_err());
        let long = vec![a(0, b"h"); MAX_HOPS];
        let onward = [a(0, b"f"), a(0, b"rest")];
        let e = forward_onward(long.iter().copied(), &onward).unwrap_err();
        assert!(e.to_string().contains("the limit is 64"), "{e}");
        assert_eq!(
            forward_onward(long[1..].iter().copied(), &onward)
                .unwrap()
                .len(),
            MAX_HOPS
        );
    }

    proptest! {
        #[test]
        fn forwarding_keeps_every_hop_after_the_forwarder(
            route in proptest::collection::vec((0u16..3, proptest::collection::vec(any::<u8>(), 1..8)), 0..40),
            onward in proptest::collection::vec((0u16..3, proptest::collection::vec(any::<u8>(), 1..8)), 1..40),
        ) {
            let route: Vec<Address<'_>> = route.iter().map(|(t, v)| a(*t, v)).collect();
            let onward: Vec<Address<'_>> = onward.iter().map(|(t, v)| a(*t, v)).collect();
            match forward_onward(route.iter().copied(), &onward) {
                Ok(out) => {
                    prop_assert_eq!(&out[..route.len()], &route[..]);
                    prop_assert_eq!(&out[route.len()..], &onward[1..]);
                }
                Err(_) => prop_assert!(route.len() + onward.len() - 1 > MAX_HOPS),
            }
        }
    }
}
