//! `phone`: a call to a mobile or office phone. Enrolment needs no proof (the first call is
//! the proof): the method is active at once, its number checked by the same destination policy
//! as a verification's. What a sign-in page may show of it is masked.

use crate::model::Destination;
use crate::user::mask_phone;

/// A phone method's number and extension, as accepted.
#[derive(Clone, Debug)]
pub struct PhoneMethod {
    pub destination: Destination,
    pub extension: Option<String>,
}

impl PhoneMethod {
    /// `••• ••23`: enough for the user to recognise, nothing for a shoulder-surfer.
    pub fn masked(&self) -> String {
        mask_phone(&self.destination)
    }
}
